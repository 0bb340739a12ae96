//! The seed catalog: twelve products in five categories, fixed at compile time so tests and
//! probes can name them (`/api/products/1` is always the Citadel Laptop Pro 15 at $999.00).

use serde_json::{Value, json};

/// The seeded smoke-test account's email, as in the CitadelBuy runbook.
pub const TEST_USER_EMAIL: &str = "test@citadelbuy.com";
/// The seeded smoke-test account's password.
pub const TEST_USER_PASSWORD: &str = "Test1234!";
/// The seeded smoke-test account's display name.
pub const TEST_USER_NAME: &str = "Smoke Test User";

/// One product for sale. Prices are held in cents so totals add up exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Product {
    /// String id, "1".."12".
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// Unit price in cents.
    pub price_cents: u64,
    /// The name of the product's [`Category`].
    pub category: &'static str,
    /// One-sentence description.
    pub description: &'static str,
    /// Units in stock.
    pub stock: u32,
}

/// A product category; its product count is computed from [`PRODUCTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Category {
    /// String id, "1".."5".
    pub id: &'static str,
    /// Display name, as used in [`Product::category`].
    pub name: &'static str,
    /// URL-safe name.
    pub slug: &'static str,
}

/// Every category, in display order.
pub const CATEGORIES: [Category; 5] = [
    Category {
        id: "1",
        name: "Electronics",
        slug: "electronics",
    },
    Category {
        id: "2",
        name: "Home & Kitchen",
        slug: "home-kitchen",
    },
    Category {
        id: "3",
        name: "Sports & Outdoors",
        slug: "sports-outdoors",
    },
    Category {
        id: "4",
        name: "Books",
        slug: "books",
    },
    Category {
        id: "5",
        name: "Fashion",
        slug: "fashion",
    },
];

/// Every product, in id order.
pub const PRODUCTS: [Product; 12] = [
    Product {
        id: "1",
        name: "Citadel Laptop Pro 15",
        price_cents: 99_900,
        category: "Electronics",
        description: "A 15-inch workhorse with 32 GB of memory and an all-day battery.",
        stock: 25,
    },
    Product {
        id: "2",
        name: "Citadel Laptop Air 13",
        price_cents: 74_900,
        category: "Electronics",
        description: "A featherweight 13-inch machine for travel and study.",
        stock: 40,
    },
    Product {
        id: "3",
        name: "Gaming Laptop X17",
        price_cents: 149_900,
        category: "Electronics",
        description: "A 17-inch gaming machine with a 240 Hz display.",
        stock: 8,
    },
    Product {
        id: "4",
        name: "Wireless Noise-Cancelling Headphones",
        price_cents: 19_999,
        category: "Electronics",
        description: "Over-ear headphones with 30 hours of quiet.",
        stock: 60,
    },
    Product {
        id: "5",
        name: "UltraSharp 4K Monitor 27-inch",
        price_cents: 39_900,
        category: "Electronics",
        description: "A colour-accurate 27-inch 4K display with USB-C.",
        stock: 15,
    },
    Product {
        id: "6",
        name: "Stainless Steel Espresso Machine",
        price_cents: 32_900,
        category: "Home & Kitchen",
        description: "Café-quality espresso with a built-in milk frother.",
        stock: 12,
    },
    Product {
        id: "7",
        name: "Cast Iron Skillet 12-inch",
        price_cents: 3_995,
        category: "Home & Kitchen",
        description: "Pre-seasoned and oven-safe, made to last generations.",
        stock: 80,
    },
    Product {
        id: "8",
        name: "Trail Running Shoes",
        price_cents: 12_900,
        category: "Sports & Outdoors",
        description: "Grippy, light shoes for rocky trails.",
        stock: 35,
    },
    Product {
        id: "9",
        name: "Yoga Mat Pro",
        price_cents: 4_500,
        category: "Sports & Outdoors",
        description: "A non-slip 6 mm mat that rolls up small.",
        stock: 50,
    },
    Product {
        id: "10",
        name: "The Rust Programming Language",
        price_cents: 3_999,
        category: "Books",
        description: "The official guide to writing reliable and efficient software.",
        stock: 100,
    },
    Product {
        id: "11",
        name: "Site Reliability Engineering",
        price_cents: 4_450,
        category: "Books",
        description: "How Google runs production systems.",
        stock: 70,
    },
    Product {
        id: "12",
        name: "Leather Laptop Backpack",
        price_cents: 8_900,
        category: "Fashion",
        description: "A padded full-grain leather backpack that fits 16-inch laptops.",
        stock: 30,
    },
];

/// Looks a product up by its string id.
pub fn product(id: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|p| p.id == id)
}

/// Products whose name, description or category contains `query`, ignoring case.
pub fn search(query: &str) -> Vec<&'static Product> {
    let needle = query.to_lowercase();
    PRODUCTS
        .iter()
        .filter(|p| {
            [p.name, p.description, p.category]
                .iter()
                .any(|field| field.to_lowercase().contains(&needle))
        })
        .collect()
}

/// Converts cents to a JSON-friendly dollar amount (99_900 → 999.0).
pub fn dollars(cents: u64) -> f64 {
    cents as f64 / 100.0
}

/// Formats cents for display: 99_900 → "$999.00".
pub fn format_price(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

impl Product {
    /// The product's relative image URL, served by the shop as a generated SVG.
    pub fn image_url(&self) -> String {
        format!("/images/products/{}.svg", self.id)
    }

    /// The product as the JSON API returns it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "price": dollars(self.price_cents),
            "category": self.category,
            "description": self.description,
            "stock": self.stock,
            "image": self.image_url(),
        })
    }
}

impl Category {
    /// How many products belong to this category.
    pub fn product_count(&self) -> usize {
        PRODUCTS.iter().filter(|p| p.category == self.name).count()
    }

    /// The category as the JSON API returns it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "slug": self.slug,
            "productCount": self.product_count(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_product_names_a_known_category() {
        for p in &PRODUCTS {
            assert!(
                CATEGORIES.iter().any(|c| c.name == p.category),
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn search_ignores_case_and_finds_laptops() {
        let hits = search("LAPTOP");
        assert!(hits.len() >= 3);
        assert!(search("books").iter().all(|p| p.category == "Books"));
    }

    #[test]
    fn prices_format_with_cents() {
        assert_eq!(format_price(99_900), "$999.00");
        assert_eq!(format_price(3_995), "$39.95");
        assert_eq!(dollars(19_999), 199.99);
    }
}
