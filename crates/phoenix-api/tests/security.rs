//! Authentication over HTTP against a real server and store: tokens that must be refused
//! (expired, forged, `alg: none`, malformed, revoked), refresh rotation and reuse, wrong
//! passwords, API keys, enrollment tokens, agent revocation, rate limits, and bad input on
//! every new endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::sync::Arc;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use phoenix_api::auth::JwtClaims;
use reqwest::Client;
use serde_json::{json, Value};

on_both_backends!(
    expired_forged_alg_none_and_malformed_tokens_are_refused,
    logout_revokes_the_session_and_its_access_token,
    refresh_rotates_and_reuse_revokes_the_whole_family,
    wrong_password_and_unknown_user_get_the_same_401,
    api_keys_are_shown_once_scoped_tracked_and_revocable,
    enrollment_tokens_expire_run_out_and_are_revocable_beside_the_bootstrap_token,
    revoked_agent_is_refused_and_its_tasks_go_back_to_the_queue,
    users_are_managed_by_admins_and_disabled_users_are_shut_out,
    bad_input_on_auth_endpoints_names_the_field,
);

async fn me(client: &Client, s: &TestServer) -> reqwest::Response {
    client.get(s.url("/api/v1/auth/me")).send().await.unwrap()
}

fn admin_claims(s: &TestServer) -> JwtClaims {
    // The claims the admin's real token carries, to re-sign them in other ways.
    let token = s.admin_login["access_token"].as_str().unwrap();
    let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
    v.validate_exp = false;
    v.set_issuer(&["phoenix"]);
    jsonwebtoken::decode::<JwtClaims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &v,
    )
    .unwrap()
    .claims
}

fn sign(claims: &JwtClaims, key: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn refused(s: &TestServer, authorization: &str) -> Value {
    let res = s
        .anon
        .get(s.url("/api/v1/auth/me"))
        .header("authorization", authorization)
        .send()
        .await
        .unwrap();
    let body = error_body(res, 401).await;
    assert_eq!(body["error"]["code"], "unauthorized");
    body
}

async fn expired_forged_alg_none_and_malformed_tokens_are_refused(s: &TestServer) {
    // The real token works.
    assert_eq!(me(&s.client, s).await.status(), 200);
    let claims = admin_claims(s);

    // Expired: correctly signed, exp in the past.
    let mut expired = claims.clone();
    expired.iat -= 3600;
    expired.exp = chrono::Utc::now().timestamp() - 1;
    let body = refused(s, &format!("Bearer {}", sign(&expired, JWT_SECRET))).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    // Forged: signed with another key.
    refused(
        s,
        &format!(
            "Bearer {}",
            sign(&claims, "another-key-of-32-characters-or-more")
        ),
    )
    .await;

    // Forged: a role raised in the payload of a real token (signature no longer matches).
    let real = s.admin_login["access_token"].as_str().unwrap();
    let parts: Vec<&str> = real.split('.').collect();
    let mut tampered = claims.clone();
    tampered.name = "someone-else".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_vec(&tampered).unwrap()),
        parts[2]
    );
    refused(s, &format!("Bearer {forged}")).await;

    // alg: none, no signature.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(&serde_json::to_vec(&claims).unwrap())
    );
    refused(s, &format!("Bearer {none}")).await;

    // Malformed.
    for bad in [
        "Bearer not-a-token",
        "Bearer a.b.c",
        "Bearer ",
        "Bearer",
        "Basic YWRtaW46cGFzc3dvcmQ=",
        "phx_0000",
        "Bearer phx_0000000000000000",
    ] {
        refused(s, bad).await;
    }
    // No header at all.
    let body = error_body(me(&s.anon, s).await, 401).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization"),
        "{body}"
    );
}

async fn logout_revokes_the_session_and_its_access_token(s: &TestServer) {
    let tokens = login(&s.anon, &s.base, ADMIN_USER, ADMIN_PASSWORD).await;
    let client = bearer_client(tokens["access_token"].as_str().unwrap());
    assert_eq!(me(&client, s).await.status(), 200);
    let res = client
        .post(s.url("/api/v1/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let body = error_body(me(&client, s).await, 401).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    let res = s
        .anon
        .post(s.url("/api/v1/auth/refresh"))
        .json(&json!({ "refresh_token": tokens["refresh_token"] }))
        .send()
        .await
        .unwrap();
    error_body(res, 401).await;
    // Other sessions of the same user are untouched.
    assert_eq!(me(&s.client, s).await.status(), 200);
}

async fn refresh(s: &TestServer, token: &Value) -> reqwest::Response {
    s.anon
        .post(s.url("/api/v1/auth/refresh"))
        .json(&json!({ "refresh_token": token }))
        .send()
        .await
        .unwrap()
}

async fn refresh_rotates_and_reuse_revokes_the_whole_family(s: &TestServer) {
    let first = login(&s.anon, &s.base, ADMIN_USER, ADMIN_PASSWORD).await;
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 900);
    let res = refresh(s, &first["refresh_token"]).await;
    assert_eq!(res.status(), 200);
    let second: Value = res.json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    let second_client = bearer_client(second["access_token"].as_str().unwrap());
    assert_eq!(me(&second_client, s).await.status(), 200);

    // The first refresh token again: a replay. The whole family goes.
    let body = error_body(refresh(s, &first["refresh_token"]).await, 401).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{body}"
    );
    error_body(refresh(s, &second["refresh_token"]).await, 401).await;
    error_body(me(&second_client, s).await, 401).await;
    // Unknown refresh token.
    error_body(refresh(s, &json!("phr_nothing")).await, 401).await;
}

async fn wrong_password_and_unknown_user_get_the_same_401(s: &TestServer) {
    let attempt = |username: &'static str, password: &'static str| async move {
        let res = s
            .anon
            .post(s.url("/api/v1/auth/login"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap();
        error_body(res, 401).await
    };
    let wrong = attempt(ADMIN_USER, "not-the-password").await;
    let unknown = attempt("nobody-here", "not-the-password").await;
    assert_eq!(wrong, unknown);
    assert_eq!(wrong["error"]["message"], "invalid username or password");
}

async fn api_keys_are_shown_once_scoped_tracked_and_revocable(s: &TestServer) {
    let operator = s.user_client("keys-op", "operator").await;
    // Above one's own role: refused.
    let res = operator
        .post(s.url("/api/v1/api-keys"))
        .json(&json!({ "name": "too much", "role": "admin" }))
        .send()
        .await
        .unwrap();
    error_body(res, 403).await;

    let res = operator
        .post(s.url("/api/v1/api-keys"))
        .json(&json!({ "name": "ci", "expires_in_days": 30 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("phx_"));
    assert_eq!(created["role"], "operator");
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));

    let by_key = bearer_client(&key);
    let res = me(&by_key, s).await;
    assert_eq!(res.status(), 200);
    let who: Value = res.json().await.unwrap();
    assert_eq!(who["username"], "keys-op");
    assert_eq!(who["authenticated_by"], "api_key");
    // An operator's key creates experiments, owned by the key's user.
    let res = by_key
        .post(s.url("/api/v1/experiments"))
        .json(&json!({
            "name": "by key",
            "baseline_pipeline": "baseline",
            "candidate_pipeline": "adaptive",
            "target_hosts": ["node-a"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap()["owner"], "keys-op");

    // Listed without the key, with its last use.
    let list: Value = operator
        .get(s.url("/api/v1/api-keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = &list.as_array().unwrap()[0];
    assert!(listed.get("key").is_none(), "{listed}");
    assert!(listed["last_used_at"].is_string(), "{listed}");
    // Only admins list everyone's.
    let res = operator
        .get(s.url("/api/v1/api-keys?all=true"))
        .send()
        .await
        .unwrap();
    error_body(res, 403).await;
    let all: Value = s
        .client
        .get(s.url("/api/v1/api-keys?all=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1);

    // Another user cannot revoke it (404: not theirs); the owner can.
    let id = created["id"].as_str().unwrap();
    let stranger = s.user_client("keys-stranger", "operator").await;
    let res = stranger
        .delete(s.url(&format!("/api/v1/api-keys/{id}")))
        .send()
        .await
        .unwrap();
    error_body(res, 404).await;
    let res = operator
        .delete(s.url(&format!("/api/v1/api-keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let body = error_body(me(&by_key, s).await, 401).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    // Bad input.
    let res = operator
        .post(s.url("/api/v1/api-keys"))
        .json(&json!({ "name": "", "expires_in_days": 0 }))
        .send()
        .await
        .unwrap();
    let body = error_body(res, 400).await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("name"),
        "{body}"
    );
    let res = operator
        .post(s.url("/api/v1/api-keys"))
        .json(&json!({ "name": "x", "expires_in_days": 0 }))
        .send()
        .await
        .unwrap();
    let body = error_body(res, 400).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expires_in_days"),
        "{body}"
    );
    let res = operator
        .post(s.url("/api/v1/api-keys"))
        .json(&json!({ "name": "x", "role": "root" }))
        .send()
        .await
        .unwrap();
    let body = error_body(res, 400).await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("role"),
        "{body}"
    );
    let res = operator
        .delete(s.url("/api/v1/api-keys/not-a-uuid"))
        .send()
        .await
        .unwrap();
    let body = error_body(res, 400).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("path.id"),
        "{body}"
    );
}

async fn enroll_with(s: &TestServer, host: &str, token: &str) -> reqwest::Response {
    s.anon
        .post(s.url("/api/v1/agent/enroll"))
        .json(&json!({ "host_id": host, "enrollment_token": token }))
        .send()
        .await
        .unwrap()
}

async fn enrollment_tokens_expire_run_out_and_are_revocable_beside_the_bootstrap_token(
    s: &TestServer,
) {
    let res = s
        .post(
            "/api/v1/enrollment-tokens",
            json!({ "name": "rollout", "max_uses": 1, "expires_in_seconds": 3600 }),
        )
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["use_count"], 0);
    assert_eq!(created["created_by"], ADMIN_USER);

    assert_eq!(enroll_with(s, "tok-a", &token).await.status(), 200);
    let body = error_body(enroll_with(s, "tok-b", &token).await, 401).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("used up"),
        "{body}"
    );
    // The bootstrap token keeps working.
    assert_eq!(enroll_with(s, "tok-b", ENROLL_TOKEN).await.status(), 200);
    error_body(enroll_with(s, "tok-c", "pet_unknown").await, 401).await;

    let id = created["id"].as_str().unwrap();
    let shown: Value = s
        .get(&format!("/api/v1/enrollment-tokens/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["use_count"], 1);
    assert!(shown.get("token").is_none(), "{shown}");

    let res = s
        .post("/api/v1/enrollment-tokens", json!({ "name": "to revoke" }))
        .await;
    let other: Value = res.json().await.unwrap();
    let res = s
        .client
        .delete(s.url(&format!(
            "/api/v1/enrollment-tokens/{}",
            other["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let body = error_body(
        enroll_with(s, "tok-d", other["token"].as_str().unwrap()).await,
        401,
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    let list: Value = s
        .get("/api/v1/enrollment-tokens")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Bad input.
    for (body, field) in [
        (json!({ "name": "x", "max_uses": 0 }), "max_uses"),
        (
            json!({ "name": "x", "expires_in_seconds": 5 }),
            "expires_in_seconds",
        ),
        (json!({ "name": "" }), "name"),
        (json!({ "name": "x", "uses": 3 }), "uses"),
    ] {
        let res = s.post("/api/v1/enrollment-tokens", body).await;
        let err = error_body(res, 400).await;
        assert!(
            err["error"]["message"].as_str().unwrap().contains(field),
            "{err}"
        );
    }
    let res = s.get("/api/v1/enrollment-tokens/nope").await;
    error_body(res, 400).await;
    let res = s
        .get(&format!(
            "/api/v1/enrollment-tokens/{}",
            uuid::Uuid::new_v4()
        ))
        .await;
    error_body(res, 404).await;
}

async fn revoked_agent_is_refused_and_its_tasks_go_back_to_the_queue(s: &TestServer) {
    let secret = s.enroll("rev-a").await;
    let agent = s.agent("rev-a", &secret);
    let res = s
        .post(
            "/api/v1/tasks",
            json!({ "type": "loadsim", "host_id": "rev-a", "max_attempts": 3 }),
        )
        .await;
    assert_eq!(res.status(), 201);
    let task_id = res.json::<Value>().await.unwrap()["task"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let polled: Value = agent.poll("2s").await.json().await.unwrap();
    assert_eq!(polled["tasks"][0]["id"], task_id.as_str());
    assert_eq!(agent.status(&task_id, "running").await.status(), 200);

    // User credentials are refused on agent routes, agent credentials on user routes.
    let res = s
        .client
        .get(s.url("/api/v1/agent/tasks?wait=0"))
        .send()
        .await
        .unwrap();
    error_body(res, 401).await;
    let res = s
        .anon
        .get(s.url("/api/v1/experiments"))
        .header("x-agent-host-id", "rev-a")
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    error_body(res, 401).await;

    let res = s.post("/api/v1/agents/rev-a/revoke", json!({})).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["requeued_tasks"], 1);

    let res = agent
        .post("/api/v1/agent/heartbeat", json!({ "version": "1" }))
        .await;
    let err = error_body(res, 401).await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{err}"
    );
    let task: Value = s
        .get(&format!("/api/v1/tasks/{task_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(task["status"], "pending", "{task}");
    assert!(task["assigned_to"].is_null(), "{task}");
    // A revoked agent cannot enroll again.
    let res = enroll_with(s, "rev-a", ENROLL_TOKEN).await;
    error_body(res, 401).await;

    // Bad input.
    let res = s
        .post("/api/v1/agents/no-such-host/revoke", json!({}))
        .await;
    error_body(res, 404).await;
    let res = s.post("/api/v1/agents/bad%20host!/revoke", json!({})).await;
    let err = error_body(res, 400).await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("host_id"),
        "{err}"
    );
}

async fn users_are_managed_by_admins_and_disabled_users_are_shut_out(s: &TestServer) {
    let res = s
        .post(
            "/api/v1/users",
            json!({ "username": "ursula", "password": "ursula-password", "role": "viewer" }),
        )
        .await;
    assert_eq!(res.status(), 201);
    let user: Value = res.json().await.unwrap();
    assert!(user.get("password_hash").is_none(), "{user}");
    let id = user["id"].as_str().unwrap().to_string();
    let res = s
        .post(
            "/api/v1/users",
            json!({ "username": "ursula", "password": "another-password", "role": "viewer" }),
        )
        .await;
    let err = error_body(res, 409).await;
    assert_eq!(err["error"]["code"], "already_exists");

    let tokens = login(&s.anon, &s.base, "ursula", "ursula-password").await;
    let ursula = bearer_client(tokens["access_token"].as_str().unwrap());
    let who: Value = me(&ursula, s).await.json().await.unwrap();
    assert_eq!(who["role"], "viewer");

    // Promotion takes effect at once (the role is read per request, not from the token).
    let res = s
        .client
        .patch(s.url(&format!("/api/v1/users/{id}")))
        .json(&json!({ "role": "operator" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let who: Value = me(&ursula, s).await.json().await.unwrap();
    assert_eq!(who["role"], "operator");

    // Disabled: its token stops working and it cannot log in.
    let res = s
        .client
        .patch(s.url(&format!("/api/v1/users/{id}")))
        .json(&json!({ "disabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    error_body(me(&ursula, s).await, 401).await;
    let res = s
        .anon
        .post(s.url("/api/v1/auth/login"))
        .json(&json!({ "username": "ursula", "password": "ursula-password" }))
        .send()
        .await
        .unwrap();
    error_body(res, 401).await;

    // An admin cannot lock itself out.
    let me_id = s.admin_login["user"]["id"].as_str().unwrap().to_string();
    let res = s
        .client
        .patch(s.url(&format!("/api/v1/users/{me_id}")))
        .json(&json!({ "role": "viewer" }))
        .send()
        .await
        .unwrap();
    error_body(res, 409).await;
    let res = s
        .client
        .delete(s.url(&format!("/api/v1/users/{me_id}")))
        .send()
        .await
        .unwrap();
    error_body(res, 409).await;

    let res = s
        .client
        .delete(s.url(&format!("/api/v1/users/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    error_body(s.get(&format!("/api/v1/users/{id}")).await, 404).await;
    let list: Value = s.get("/api/v1/users").await.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
}

async fn bad_input_on_auth_endpoints_names_the_field(s: &TestServer) {
    let post_anon = |path: &'static str, body: Value| async move {
        s.anon.post(s.url(path)).json(&body).send().await.unwrap()
    };
    let err = error_body(
        post_anon("/api/v1/auth/login", json!({ "username": "admin" })).await,
        400,
    )
    .await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("password"),
        "{err}"
    );
    let res = s
        .anon
        .post(s.url("/api/v1/auth/login"))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    error_body(res, 400).await;
    let res = s
        .anon
        .post(s.url("/api/v1/auth/login"))
        .body("username=admin")
        .send()
        .await
        .unwrap();
    error_body(res, 415).await;
    error_body(
        post_anon("/api/v1/auth/refresh", json!({ "refresh": "x" })).await,
        400,
    )
    .await;

    for (body, field) in [
        (
            json!({ "username": "bad name", "password": "long-enough", "role": "viewer" }),
            "username",
        ),
        (
            json!({ "username": "ok", "password": "short", "role": "viewer" }),
            "password",
        ),
        (
            json!({ "username": "ok", "password": "long-enough", "role": "root" }),
            "role",
        ),
        (
            json!({ "username": "ok", "password": "long-enough" }),
            "role",
        ),
    ] {
        let err = error_body(s.post("/api/v1/users", body).await, 400).await;
        assert!(
            err["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {err}"
        );
    }
    let err = error_body(s.get("/api/v1/users/12").await, 400).await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("path.id"),
        "{err}"
    );
    let res = s
        .client
        .patch(s.url(&format!("/api/v1/users/{}", uuid::Uuid::new_v4())))
        .json(&json!({ "password": "short" }))
        .send()
        .await
        .unwrap();
    error_body(res, 400).await;
    let res = s
        .client
        .patch(s.url(&format!("/api/v1/users/{}", uuid::Uuid::new_v4())))
        .json(&json!({ "role": "viewer" }))
        .send()
        .await
        .unwrap();
    error_body(res, 404).await;
    // Logout with an API key: there is no session to end.
    let res = s
        .post("/api/v1/api-keys", json!({ "name": "logout test" }))
        .await;
    let key: Value = res.json().await.unwrap();
    let res = bearer_client(key["key"].as_str().unwrap())
        .post(s.url("/api/v1/auth/logout"))
        .send()
        .await
        .unwrap();
    error_body(res, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let config = phoenix_api::Config {
        rate_limit_per_second: 0.5,
        rate_limit_burst: 3,
        anonymous_rate_limit_per_second: 0.5,
        // The harness logs the admin in once before the test starts.
        anonymous_rate_limit_burst: 3,
        ..test_config()
    };
    let s = start_sqlite_with(config, Arc::new(phoenix_core::SystemClock)).await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..4 {
        let res = me(&s.client, &s).await;
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            limited = Some(res);
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    let res = limited.unwrap();
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let body = error_body(res, 429).await;
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["details"]["retry_after_seconds"], retry);

    // Another user has its own bucket.
    let other = login(&s.anon, &s.base, ADMIN_USER, ADMIN_PASSWORD).await;
    // (same user, new session: still the same user's bucket)
    let same_user = bearer_client(other["access_token"].as_str().unwrap());
    assert_eq!(me(&same_user, &s).await.status(), 429);

    // Anonymous logins are limited per address: the harness used one of the three.
    let mut anon = Vec::new();
    for _ in 0..3 {
        let res = s
            .anon
            .post(s.url("/api/v1/auth/login"))
            .json(&json!({ "username": "x", "password": "y-y-y-y-y" }))
            .send()
            .await
            .unwrap();
        anon.push(res.status().as_u16());
    }
    assert_eq!(anon.last(), Some(&429), "{anon:?}");
    // Probes are never limited.
    for _ in 0..10 {
        assert_eq!(
            s.anon.get(s.url("/health")).send().await.unwrap().status(),
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_create_subcommand_adds_a_user_that_can_log_in() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("phoenix.db").display());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_phoenix-api"))
        .args([
            "admin",
            "create",
            "--username",
            "ops-lead",
            "--password-stdin",
            "--role",
            "operator",
            "--database-url",
            &url,
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"ops-lead-password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A server on that database: the user exists (so no admin is bootstrapped) and logs in.
    let store = phoenix_store::connect(&url).await.unwrap();
    let mut config = test_config();
    config.database_url = Some(url.clone());
    config.data_dir = dir.path().to_path_buf();
    let state = phoenix_api::AppState::new(config, store, Arc::new(phoenix_core::SystemClock))
        .await
        .unwrap();
    let tokens = state
        .auth
        .login("ops-lead", "ops-lead-password")
        .await
        .unwrap();
    assert_eq!(tokens.user.role, phoenix_api::auth::Role::Operator);
    assert!(state.auth.login(ADMIN_USER, ADMIN_PASSWORD).await.is_err());

    // A short password is refused with the reason, and nothing is created.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_phoenix-api"))
        .args([
            "admin",
            "create",
            "--username",
            "weak",
            "--password-stdin",
            "--database-url",
            &url,
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"short\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("password"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_without_a_password_creates_an_admin_with_a_generated_one() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("phoenix.db").display());
    let store = phoenix_store::connect(&url).await.unwrap();
    let mut config = test_config();
    config.admin_password = None;
    config.database_url = Some(url);
    let state = phoenix_api::AppState::new(
        config.clone(),
        store.clone(),
        Arc::new(phoenix_core::SystemClock),
    )
    .await
    .unwrap();
    let users = state.auth.list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].username, "admin");
    assert_eq!(users[0].role, phoenix_api::auth::Role::Admin);
    assert!(users[0].password_hash.starts_with("$argon2id$"));
    // A second start finds the user and creates nothing.
    let again = phoenix_api::AppState::new(config, store, Arc::new(phoenix_core::SystemClock))
        .await
        .unwrap();
    assert_eq!(again.auth.list_users().await.unwrap(), users);
}
