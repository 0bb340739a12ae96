//! HTML building blocks shared by every page: escaping, the page shell (head, responsive CSS,
//! header with nav, cart count and search form) and the product card.

use crate::catalog::{self, Product};
use crate::store::User;

/// What the header needs to know about the visitor.
#[derive(Debug, Default)]
pub(crate) struct Visitor {
    pub user: Option<User>,
    /// Units in the visitor's cart.
    pub cart_count: u32,
}

/// Escapes text for HTML element content and double-quoted attributes.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2937;background:#f9fafb}
a{color:#1d4ed8}
.site-header{display:flex;flex-wrap:wrap;align-items:center;gap:1rem;padding:.75rem 1.5rem;background:#111827;color:#fff}
.site-header a{color:#fff;text-decoration:none}
.logo{font-weight:700;font-size:1.25rem}
.desktop-nav{display:flex;gap:1rem;align-items:center}
.mobile-menu-button{display:none;background:none;border:1px solid #fff;color:#fff;padding:.3rem .6rem;border-radius:4px}
#search-form{display:flex;gap:.25rem;margin-left:auto}
#search-form input{padding:.35rem .5rem;border-radius:4px;border:none;min-width:12rem}
#search-form button,.button{padding:.4rem .8rem;border:none;border-radius:4px;background:#2563eb;color:#fff;cursor:pointer}
.cart-link{white-space:nowrap}
main{max-width:1100px;margin:0 auto;padding:1.5rem}
.product-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1rem}
.product-card{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:1rem}
.product-card img,.product-detail img{max-width:100%;height:auto;display:block}
.product-price{font-weight:700;color:#047857}
.error{color:#b91c1c;font-weight:600}
.cart-table{width:100%;border-collapse:collapse;background:#fff}
.cart-table td,.cart-table th{padding:.5rem;border-bottom:1px solid #e5e7eb;text-align:left}
form.stacked{display:flex;flex-direction:column;gap:.5rem;max-width:22rem}
form.stacked input{padding:.5rem}
@media (max-width:768px){
  .desktop-nav{display:none}
  .mobile-menu-button{display:inline-block}
  .site-header.menu-open .desktop-nav{display:flex;flex-direction:column;align-items:flex-start;width:100%}
  #search-form{width:100%;margin-left:0}
  #search-form input{flex:1;min-width:0}
}
"#;

const MENU_SCRIPT: &str = r#"<script>
document.querySelector('.mobile-menu-button').addEventListener('click', function () {
  var header = document.querySelector('.site-header');
  var open = header.classList.toggle('menu-open');
  this.setAttribute('aria-expanded', open ? 'true' : 'false');
});
</script>"#;

/// A complete page: `<title>{title} | CitadelBuy</title>`, the header, then `main`.
pub(crate) fn page(title: &str, visitor: &Visitor, search_value: &str, main: &str) -> String {
    let account = match &visitor.user {
        Some(user) => format!(
            r#"<span id="user-name">{}</span><a id="logout-link" href="/logout">Log out</a>"#,
            escape(&user.name)
        ),
        None => r#"<a id="login-link" href="/login">Log in</a>"#.to_string(),
    };
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} | CitadelBuy</title>
<link rel="icon" href="data:,">
<style>{STYLE}</style>
</head>
<body>
<header class="site-header">
<a class="logo" href="/">CitadelBuy</a>
<button class="mobile-menu-button" type="button" aria-label="Menu" aria-expanded="false">Menu</button>
<nav class="desktop-nav" aria-label="Main">
<a href="/">Home</a>
<a href="/products">Products</a>
{account}
</nav>
<a class="cart-link" href="/cart">Cart (<span id="cart-count">{cart_count}</span>)</a>
<form id="search-form" action="/search" method="get" role="search">
<input id="search" name="q" type="search" placeholder="Search products" aria-label="Search products" value="{search}">
<button id="search-button" type="submit">Search</button>
</form>
</header>
<main>
{main}
</main>
{MENU_SCRIPT}
</body>
</html>
"#,
        title = escape(title),
        cart_count = visitor.cart_count,
        search = escape(search_value),
    )
}

/// A product card linking to the product's page.
pub(crate) fn product_card(product: &Product) -> String {
    format!(
        r#"<article class="product-card" data-product-id="{id}">
<a href="/products/{id}"><img src="{image}" alt="{name}" width="320" height="200" loading="lazy"></a>
<h2 class="product-name"><a href="/products/{id}">{name}</a></h2>
<p class="product-price">{price}</p>
<p class="product-category">{category}</p>
</article>
"#,
        id = escape(product.id),
        image = escape(&product.image_url()),
        name = escape(product.name),
        price = catalog::format_price(product.price_cents),
        category = escape(product.category),
    )
}

/// A grid of product cards.
pub(crate) fn product_grid<'a>(products: impl IntoIterator<Item = &'a Product>) -> String {
    let mut grid = String::from(r#"<div class="product-grid">"#);
    for product in products {
        grid.push_str(&product_card(product));
    }
    grid.push_str("</div>");
    grid
}

/// A placeholder product picture: a tinted card with the product's name.
pub(crate) fn product_svg(product: &Product) -> String {
    let hue = product
        .id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 360;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="320" height="200" viewBox="0 0 320 200"><rect width="320" height="200" fill="hsl({hue},60%,85%)"/><text x="160" y="105" font-family="sans-serif" font-size="16" text-anchor="middle" fill="#1f2937">{}</text></svg>"##,
        escape(product.name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn page_has_title_viewport_favicon_and_search_form() {
        let html = page("Home", &Visitor::default(), "", "<h1>CitadelBuy</h1>");
        assert!(html.contains("<title>Home | CitadelBuy</title>"));
        assert!(html.contains(r#"name="viewport" content="width=device-width, initial-scale=1""#));
        assert!(html.contains(r#"<link rel="icon" href="data:,">"#));
        assert!(html.contains(r#"id="search-form""#) && html.contains(r#"id="login-link""#));
    }
}
