//! One ACME order, start to end: the account (stored, so a restart does not
//! register again; registered anew if the server forgot it), an order for
//! every name, each authorization's challenge published then declared
//! ready, the wait for the server's validations, then a key and CSR
//! (instant-acme's, with rcgen) and the certificate chain.

use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use sha2::{Digest, Sha256};

use super::challenges::Challenges;
use super::store::Store;
use super::{AcmeConfig, Challenge};

/// A certificate just issued.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// How long an order may wait for the server's validations, and again for
/// its certificate.
const WAIT: Duration = Duration::from_secs(90);
/// In a fleet, how long a published challenge is given to reach the other
/// instances (they read them every half second) before the server is told.
const SPREAD: Duration = Duration::from_millis(2500);

fn retry() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(WAIT)
}

/// Orders a certificate for `conf.domains`.
pub async fn order(
    conf: &AcmeConfig,
    store: &Store,
    challenges: &Challenges,
) -> Result<Issued, String> {
    let registered = account(conf, store, false).await?;
    let ids: Vec<Identifier> = conf
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = match registered.new_order(&NewOrder::new(&ids)).await {
        Ok(o) => o,
        Err(instant_acme::Error::Api(p))
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist") =>
        {
            // The server forgot the account (a test server restarted):
            // register again and keep the new one.
            account(conf, store, true)
                .await?
                .new_order(&NewOrder::new(&ids))
                .await
                .map_err(|e| format!("new order: {e}"))?
        }
        Err(e) => return Err(format!("new order: {e}")),
    };
    let (mut tokens, mut names) = (Vec::new(), Vec::new());
    let answered = answer(conf, store, challenges, &mut order, &mut tokens, &mut names).await;
    let result = match answered {
        Ok(()) => finish(&mut order).await,
        Err(e) => Err(e),
    };
    challenges.withdraw(&tokens, &names).await;
    result
}

/// Publishes each pending authorization's challenge and tells the server.
async fn answer(
    conf: &AcmeConfig,
    store: &Store,
    challenges: &Challenges,
    order: &mut instant_acme::Order,
    tokens: &mut Vec<String>,
    names: &mut Vec<String>,
) -> Result<(), String> {
    let kind = match conf.challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            // Validated within the server's reuse period.
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("authorization is {other:?}")),
        }
        let mut challenge = authz
            .challenge(kind.clone())
            .ok_or_else(|| format!("the server offers no {kind:?} challenge"))?;
        let key_auth = challenge.key_authorization();
        let name = challenge.identifier().to_string();
        match conf.challenge {
            Challenge::Http01 => {
                challenges
                    .publish_http(&challenge.token, key_auth.as_str())
                    .await?;
                tokens.push(challenge.token.clone());
            }
            Challenge::TlsAlpn01 => {
                challenges
                    .publish_alpn(&name, key_auth.digest().as_ref())
                    .await?;
                names.push(name.clone());
            }
        }
        if store.shared() {
            tokio::time::sleep(SPREAD).await;
        }
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// Waits for the validations, then finalizes and fetches the certificate.
async fn finish(order: &mut instant_acme::Order) -> Result<Issued, String> {
    let status = order
        .poll_ready(&retry())
        .await
        .map_err(|e| format!("validation: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(format!("the order is {status:?}: validation failed"));
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let cert_pem = order
        .poll_certificate(&retry())
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    Ok(Issued { cert_pem, key_pem })
}

/// The account for `conf.directory`: stored, else registered and stored.
async fn account(conf: &AcmeConfig, store: &Store, fresh: bool) -> Result<Account, String> {
    let key = format!(
        "accounts/{}.json",
        &hex(&Sha256::digest(conf.directory.as_bytes()))[..16]
    );
    if !fresh {
        if let Some(saved) = store.get(&key).await? {
            let creds: AccountCredentials = serde_json::from_slice(&saved)
                .map_err(|e| format!("the stored account {key}: {e}"))?;
            return builder(conf)?
                .from_credentials(creds)
                .await
                .map_err(|e| format!("account: {e}"));
        }
    }
    let contact: Vec<String> = conf.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder(conf)?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            conf.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("registering an account: {e}"))?;
    let saved = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
    store.put(&key, &saved).await?;
    Ok(account)
}

fn builder(conf: &AcmeConfig) -> Result<instant_acme::AccountBuilder, String> {
    match &conf.directory_ca {
        Some(ca) => Account::builder_with_root(ca).map_err(|e| format!("{}: {e}", ca.display())),
        None => Account::builder().map_err(|e| format!("ACME client: {e}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
