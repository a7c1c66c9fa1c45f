//! `welcome_email`: on `user.registered` (`{"user_id", "email"}`), logs the
//! welcome mail it would send and emits `email.sent`. A registration with no
//! email is bad data: a permanent failure.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{Context, Emit, Event, Failure, Function, Outcome};

pub(super) struct WelcomeEmail;

#[derive(Deserialize)]
struct UserRegistered {
    user_id: Value,
    email: Option<String>,
}

#[async_trait]
impl Function for WelcomeEmail {
    async fn call(&self, event: &Event, _ctx: &Context) -> Outcome {
        let user: UserRegistered = event.json()?;
        let email = user
            .email
            .filter(|e| e.contains('@'))
            .ok_or_else(|| Failure::permanent("user.registered has no valid \"email\""))?;
        tracing::info!(user_id = %user.user_id, recipient = %email, "Sending welcome email.");
        Ok(vec![Emit::new(
            "email.sent",
            json!({"email_type": "welcome", "recipient": email, "user_id": user.user_id}),
        )]
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ctx, event};
    use super::*;

    #[tokio::test]
    async fn emits_email_sent() {
        let out = WelcomeEmail
            .call(
                &event(r#"{"user_id":123,"email":"user@example.com"}"#),
                &ctx("welcome-email"),
            )
            .await
            .unwrap()
            .emits;
        assert_eq!(
            out,
            vec![Emit::new(
                "email.sent",
                json!({"email_type": "welcome", "recipient": "user@example.com", "user_id": 123})
            )]
        );
    }

    #[tokio::test]
    async fn missing_email_is_permanent() {
        let err = WelcomeEmail
            .call(&event(r#"{"user_id":123}"#), &ctx("welcome-email"))
            .await
            .unwrap_err();
        assert!(err.is_permanent());
    }
}
