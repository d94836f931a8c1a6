//! A bearer token for a scope oci-client does not ask for: deleting a
//! manifest needs the `delete` action (`repository:NAME:delete`), which a
//! token registry grants only when asked. The usual dance: the registry's
//! challenge on `/v2/` names the token service (`realm`) and `service`;
//! the service, given the credentials, answers with the token.

use oci_client::secrets::RegistryAuth;

/// The parameters of a `Bearer` challenge (`realm`, `service`, …), or
/// `None` when the registry does not want bearer tokens.
fn bearer_challenge(header: &str) -> Option<Vec<(String, String)>> {
    let rest = header.trim().strip_prefix("Bearer ").or_else(|| header.trim().strip_prefix("bearer "))?;
    let mut params = Vec::new();
    let mut text = rest.trim();
    while !text.is_empty() {
        let (name, after) = text.split_once('=')?;
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').map_or((after, ""), |(v, a)| (v, a)),
        };
        params.push((name.trim().to_ascii_lowercase(), value.to_string()));
        text = after.trim_start_matches([',', ' ']);
    }
    Some(params)
}

/// A token for `scope` from the service that `registry_url`'s challenge
/// names, with `auth`'s credentials; `Ok(None)` when the registry does not
/// hand out tokens (it takes the credentials as they are).
pub async fn token_for(
    http: &reqwest::Client,
    registry_url: &str,
    auth: &RegistryAuth,
    scope: &str,
) -> Result<Option<String>, reqwest::Error> {
    let probe = http.get(format!("{registry_url}/v2/")).send().await?;
    let challenge = probe
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(bearer_challenge);
    let Some(params) = challenge else { return Ok(None) };
    let Some((_, realm)) = params.iter().find(|(n, _)| n == "realm") else { return Ok(None) };
    let mut query = vec![("scope", scope.to_string())];
    if let Some((_, service)) = params.iter().find(|(n, _)| n == "service") {
        query.push(("service", service.clone()));
    }
    let mut request = http.get(realm).query(&query);
    if let RegistryAuth::Basic(user, password) = auth {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await?.error_for_status()?;
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await?).unwrap_or_default();
    Ok(["token", "access_token"].iter().find_map(|k| body[*k].as_str()).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read_with_quoted_and_bare_values() {
        let params =
            bearer_challenge(r#"Bearer realm="https://auth.example/token",service="reg",scope="a:b:c,d""#)
                .unwrap();
        assert_eq!(params[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(params[1], ("service".into(), "reg".into()));
        assert_eq!(params[2], ("scope".into(), "a:b:c,d".into()));
        assert_eq!(bearer_challenge("Bearer realm=x, service=y").unwrap()[1], ("service".into(), "y".into()));
        assert!(bearer_challenge(r#"Basic realm="x""#).is_none());
    }
}
