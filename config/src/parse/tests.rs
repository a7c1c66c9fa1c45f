//! Exploratory.
use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn explore() {
    let text = std::env::var("CFG_TEXT").unwrap_or_default();
    let env: BTreeMap<String, String> = BTreeMap::new();
    match crate::parse(&text, &env, Path::new("/etc/jetrun"), &["noop", "reserve_stock", "welcome_email"]) {
        Ok(c) => println!("{c:#?}"),
        Err(e) => println!("{e}"),
    }
}
