//! The built-in Rust functions, registered by the name a config's
//! `builtin = "..."` uses. Each function in the config gets its own instance,
//! so state (like `reserve_stock`'s stock) is per function.

mod echo;
mod noop;
mod panic_on_marker;
mod reserve_stock;
mod take_payment;
mod welcome_email;

use crate::Function;

/// Every built-in's name, sorted.
pub const BUILTINS: &[&str] = &[
    "echo",
    "noop",
    "panic_on_marker",
    "reserve_stock",
    "take_payment",
    "welcome_email",
];

/// A fresh instance of the built-in called `name`.
pub fn builtin(name: &str) -> Option<Box<dyn Function>> {
    match name {
        "echo" => Some(Box::new(echo::Echo)),
        "noop" => Some(Box::new(noop::Noop)),
        "panic_on_marker" => Some(Box::new(panic_on_marker::PanicOnMarker)),
        "reserve_stock" => Some(Box::new(reserve_stock::ReserveStock::default())),
        "take_payment" => Some(Box::new(take_payment::TakePayment::default())),
        "welcome_email" => Some(Box::new(welcome_email::WelcomeEmail)),
        _ => None,
    }
}

/// What the built-ins' tests share: a delivery context and an event with
/// the given data.
#[cfg(test)]
mod testing {
    use crate::{Context, Event};

    pub(super) fn ctx(function: &str) -> Context {
        Context {
            function: function.into(),
            attempt: 1,
            subject: "order.placed".into(),
            stream: "ORDERS".into(),
            stream_created: 1,
            sequence: 1,
            trace: None,
        }
    }

    pub(super) fn event(data: &str) -> Event {
        Event {
            data: bytes::Bytes::from(data.to_owned()),
            ..Event::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_builtin_exists_and_the_list_is_sorted() {
        for name in BUILTINS {
            assert!(
                builtin(name).is_some(),
                "{name} is listed but not registered"
            );
        }
        assert!(BUILTINS.windows(2).all(|w| w[0] < w[1]));
        assert!(builtin("nope").is_none());
    }
}
