//! The shop's mutable state: accounts, login sessions and carts, all in memory behind one
//! mutex. Every operation is short and never awaits while holding the lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rand::Rng;
use serde_json::{Value, json};

use crate::catalog::{self, TEST_USER_EMAIL, TEST_USER_NAME, TEST_USER_PASSWORD};

/// A registered customer. Passwords are stored as given: this is a test shop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    password: String,
}

impl User {
    /// The user as the API shows it (never with the password).
    pub fn to_json(&self) -> Value {
        json!({ "id": self.id, "email": self.email, "name": self.name })
    }
}

/// One product line in a cart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CartLine {
    pub product: &'static catalog::Product,
    pub quantity: u32,
}

/// A snapshot of one user's cart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cart {
    pub lines: Vec<CartLine>,
}

impl Cart {
    pub fn total_cents(&self) -> u64 {
        self.lines
            .iter()
            .map(|l| l.product.price_cents * u64::from(l.quantity))
            .sum()
    }

    /// Units in the cart, summed over lines.
    pub fn count(&self) -> u32 {
        self.lines.iter().map(|l| l.quantity).sum()
    }

    pub fn items_json(&self) -> Vec<Value> {
        self.lines
            .iter()
            .map(|l| {
                json!({
                    "productId": l.product.id,
                    "name": l.product.name,
                    "quantity": l.quantity,
                    "price": catalog::dollars(l.product.price_cents),
                })
            })
            .collect()
    }
}

/// Why a registration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RegisterRefusal {
    EmailTaken,
}

#[derive(Debug)]
struct Accounts {
    /// Keyed by lowercased email.
    users: HashMap<String, User>,
    /// Session token → lowercased email.
    sessions: HashMap<String, String>,
    /// User id → cart.
    carts: HashMap<String, Cart>,
    next_user_id: u64,
}

impl Accounts {
    fn seeded() -> Accounts {
        let seed = User {
            id: "1".to_string(),
            email: TEST_USER_EMAIL.to_string(),
            name: TEST_USER_NAME.to_string(),
            password: TEST_USER_PASSWORD.to_string(),
        };
        Accounts {
            users: HashMap::from([(TEST_USER_EMAIL.to_lowercase(), seed)]),
            sessions: HashMap::new(),
            carts: HashMap::new(),
            next_user_id: 2,
        }
    }
}

/// Shared handle to accounts, sessions and carts; clones share the same state.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    accounts: Arc<Mutex<Accounts>>,
}

impl Default for Store {
    fn default() -> Store {
        Store {
            accounts: Arc::new(Mutex::new(Accounts::seeded())),
        }
    }
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Accounts> {
        // No code panics while holding the lock, so a poisoned lock still holds sound data.
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes and releases the lock: the "database" round trip the detailed health check times.
    pub fn ping(&self) {
        drop(self.lock());
    }

    /// Puts users, sessions and carts back to the seed.
    pub fn reset(&self) {
        *self.lock() = Accounts::seeded();
    }

    pub fn register(
        &self,
        email: &str,
        name: &str,
        password: &str,
    ) -> Result<User, RegisterRefusal> {
        let mut accounts = self.lock();
        let key = email.to_lowercase();
        if accounts.users.contains_key(&key) {
            return Err(RegisterRefusal::EmailTaken);
        }
        let user = User {
            id: accounts.next_user_id.to_string(),
            email: email.to_string(),
            name: name.to_string(),
            password: password.to_string(),
        };
        accounts.next_user_id += 1;
        accounts.users.insert(key, user.clone());
        Ok(user)
    }

    /// Checks credentials and opens a session; returns its token.
    pub fn login(&self, email: &str, password: &str) -> Option<(String, User)> {
        let mut accounts = self.lock();
        let key = email.to_lowercase();
        let user = accounts
            .users
            .get(&key)
            .filter(|u| u.password == password)?
            .clone();
        let token = new_token();
        accounts.sessions.insert(token.clone(), key);
        Some((token, user))
    }

    pub fn logout(&self, token: &str) {
        self.lock().sessions.remove(token);
    }

    /// The user a session token belongs to, if the session is open.
    pub fn user_for_token(&self, token: &str) -> Option<User> {
        let accounts = self.lock();
        let key = accounts.sessions.get(token)?;
        accounts.users.get(key).cloned()
    }

    /// Adds `quantity` units of a product to the user's cart and returns the new cart.
    pub fn add_to_cart(
        &self,
        user: &User,
        product: &'static catalog::Product,
        quantity: u32,
    ) -> Cart {
        let mut accounts = self.lock();
        let cart = accounts.carts.entry(user.id.clone()).or_default();
        match cart.lines.iter_mut().find(|l| l.product.id == product.id) {
            Some(line) => line.quantity = line.quantity.saturating_add(quantity),
            None => cart.lines.push(CartLine { product, quantity }),
        }
        cart.clone()
    }

    pub fn cart(&self, user: &User) -> Cart {
        self.lock().carts.get(&user.id).cloned().unwrap_or_default()
    }
}

/// A random, opaque session token (128 bits, hex).
fn new_token() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

/// A random id for checkout sessions.
pub(crate) fn new_checkout_id() -> String {
    format!("cs_test_{:024x}", rand::rng().random::<u128>() >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_user_logs_in_and_wrong_password_does_not() {
        let store = Store::default();
        let (token, user) = store
            .login("TEST@citadelbuy.com", TEST_USER_PASSWORD)
            .expect("seed user");
        assert_eq!(user.name, TEST_USER_NAME);
        assert_eq!(store.user_for_token(&token), Some(user));
        assert!(store.login(TEST_USER_EMAIL, "nope").is_none());
    }

    #[test]
    fn cart_merges_lines_and_reset_forgets_everything() {
        let store = Store::default();
        let user = store
            .register("a@b.c", "A", "password1")
            .expect("new email");
        let laptop = catalog::product("1").expect("seeded");
        store.add_to_cart(&user, laptop, 1);
        let cart = store.add_to_cart(&user, laptop, 2);
        assert_eq!(cart.lines.len(), 1);
        assert_eq!(cart.count(), 3);
        assert_eq!(cart.total_cents(), 3 * 99_900);
        assert_eq!(
            store.register("A@B.C", "A", "password1"),
            Err(RegisterRefusal::EmailTaken)
        );
        store.reset();
        assert!(store.register("a@b.c", "A", "password1").is_ok());
        assert_eq!(store.cart(&user), Cart::default());
    }
}
