//! NATS decentralized auth made at test time: an operator, an account with
//! JetStream and its users, as nkeys and signed JWTs (the claim shapes of
//! nats-io/jwt v2); the nats-server config that trusts them (a `MEMORY`
//! resolver preloaded with its accounts) and the `.creds` file a client
//! presents.

use std::sync::atomic::{AtomicU64, Ordering};

use nkeys::KeyPair;
use serde_json::{json, Value};

use crate::clock::unix_now;

/// The JWT header every NATS v2 JWT carries.
const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// An operator, its system account (JetStream will not start without one)
/// and one account with JetStream enabled and no limits, which issues user
/// credentials.
pub struct JwtAuth {
    operator: KeyPair,
    system: KeyPair,
    account: KeyPair,
    operator_jwt: String,
    system_jwt: String,
    account_jwt: String,
}

impl JwtAuth {
    /// A fresh operator and accounts, their JWTs signed.
    pub fn new() -> Self {
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();
        let operator_jwt = encode(
            &operator,
            &operator.public_key(),
            "jetrun-test-operator",
            json!({ "system_account": system.public_key(), "type": "operator", "version": 2 }),
        );
        let system_jwt = encode(
            &operator,
            &system.public_key(),
            "SYS",
            json!({
                "limits": {
                    "subs": -1, "data": -1, "payload": -1,
                    "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
                },
                "default_permissions": { "pub": {}, "sub": {} },
                "type": "account",
                "version": 2,
            }),
        );
        let account_jwt = encode(
            &operator,
            &account.public_key(),
            "jetrun-test-account",
            json!({
                "limits": {
                    "subs": -1, "data": -1, "payload": -1,
                    "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
                },
                "default_permissions": { "pub": {}, "sub": {} },
                "type": "account",
                "version": 2,
            }),
        );
        JwtAuth {
            operator,
            system,
            account,
            operator_jwt,
            system_jwt,
            account_jwt,
        }
    }

    /// The operator's public key (`O...`).
    pub fn operator_public_key(&self) -> String {
        self.operator.public_key()
    }

    /// The account's public key (`A...`).
    pub fn account_public_key(&self) -> String {
        self.account.public_key()
    }

    /// nats-server config trusting this operator, with both accounts
    /// preloaded into a memory resolver (JetStream itself is on by the
    /// harness's `-js`).
    pub fn server_config(&self) -> String {
        format!(
            "operator: {operator}\nsystem_account: {system}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {system}: {system_jwt}\n  {account}: {account_jwt}\n}}\n",
            operator = self.operator_jwt,
            system = self.system.public_key(),
            system_jwt = self.system_jwt,
            account = self.account.public_key(),
            account_jwt = self.account_jwt,
        )
    }

    /// A new user of the account, with no permission limits: the text of its
    /// `.creds` file, and its seed (the secret in it).
    pub fn user_creds(&self, name: &str) -> (String, String) {
        let user = KeyPair::new_user();
        let jwt = encode(
            &self.account,
            &user.public_key(),
            name,
            json!({
                "pub": {}, "sub": {},
                "subs": -1, "data": -1, "payload": -1,
                "type": "user",
                "version": 2,
            }),
        );
        let seed = user.seed().expect("a generated user has a seed");
        (creds(&jwt, &seed), seed)
    }
}

impl Default for JwtAuth {
    fn default() -> Self {
        Self::new()
    }
}

/// The `.creds` file format: the user JWT, then the user's nkey seed.
fn creds(user_jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// A NATS JWT: `base64url(header).base64url(claims).base64url(signature)`,
/// the ed25519 signature by `issuer` over the first two parts. The claims
/// are `jti`, `iat`, `iss`, `sub`, `name` and `nats` (the type-specific part).
fn encode(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let iat = unix_now() as u64;
    let claims = json!({
        // Unique per JWT; nats-io/jwt hashes the claims, the server only reads it.
        "jti": format!("JETRUNTEST{iat:X}{:X}", SERIAL.fetch_add(1, Ordering::Relaxed)),
        "iat": iat,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        base64url(HEADER.as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let signature = issuer.sign(signed.as_bytes()).expect("issuer has a seed");
    format!("{signed}.{}", base64url(&signature))
}

/// Base64url without padding (RFC 4648 §5), as JWTs use.
fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claims of a JWT, after checking its header and that its `iss`
    /// signed it.
    ///
    /// # Panics
    /// When the JWT is malformed or its signature does not verify.
    fn decode(jwt: &str) -> Value {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "a JWT has three parts: {jwt}");
        let header: Value = serde_json::from_slice(&unbase64url(parts[0])).expect("header is JSON");
        assert_eq!(header, serde_json::from_str::<Value>(HEADER).unwrap());
        let claims: Value =
            serde_json::from_slice(&unbase64url(parts[1])).expect("claims are JSON");
        let issuer = KeyPair::from_public_key(claims["iss"].as_str().expect("iss"))
            .expect("iss is a public nkey");
        issuer
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &unbase64url(parts[2]),
            )
            .expect("signed by iss");
        claims
    }

    fn unbase64url(text: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .unwrap_or_else(|e| panic!("{text:?} is not base64url: {e}"))
    }

    #[test]
    fn the_chain_of_trust_is_signed_and_shaped_as_nats_expects() {
        let auth = JwtAuth::new();
        let operator = decode(&auth.operator_jwt);
        assert_eq!(operator["iss"], operator["sub"], "self-signed");
        assert_eq!(operator["iss"], auth.operator_public_key());
        assert_eq!(operator["nats"]["type"], "operator");
        assert_eq!(operator["nats"]["version"], 2);

        let account = decode(&auth.account_jwt);
        assert_eq!(account["iss"], auth.operator_public_key());
        assert_eq!(account["sub"], auth.account_public_key());
        assert_eq!(account["nats"]["type"], "account");
        assert_eq!(
            account["nats"]["limits"]["disk_storage"], -1,
            "JetStream on"
        );
        assert_ne!(account["jti"], operator["jti"]);
        let system = decode(&auth.system_jwt);
        assert_eq!(operator["nats"]["system_account"], system["sub"]);
        assert_eq!(system["iss"], auth.operator_public_key());

        let (text, seed) = auth.user_creds("app");
        let jwt = text
            .split("-----BEGIN NATS USER JWT-----\n")
            .nth(1)
            .and_then(|rest| rest.split('\n').next())
            .expect("a JWT block");
        let user = decode(jwt);
        assert_eq!(user["iss"], auth.account_public_key());
        assert_eq!(user["nats"]["type"], "user");
        let key = KeyPair::from_seed(&seed).expect("a user seed");
        assert_eq!(user["sub"], key.public_key());
        assert!(text.contains(&format!(
            "-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------"
        )));

        let server = auth.server_config();
        assert!(server.contains(&format!("operator: {}\n", auth.operator_jwt)));
        assert!(server.contains(&format!(
            "{}: {}",
            auth.account_public_key(),
            auth.account_jwt
        )));
    }
}
