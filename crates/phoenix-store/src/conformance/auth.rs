//! Conformance of [`crate::AuthStore`]: users, sessions with rotating refresh tokens, API
//! keys and enrollment tokens, identical on every backend.

use std::sync::Arc;

use chrono::Duration;
use uuid::Uuid;

use super::t0;
use crate::{
    ApiKeyRecord, EnrollmentTokenRecord, EnrollmentTokenUse, RefreshOutcome, Role, SharedStore,
    StoreError, UserPatch, UserRecord,
};

pub fn user(name: &str, role: Role) -> UserRecord {
    UserRecord {
        id: Uuid::new_v4(),
        username: name.to_string(),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA${name}"),
        role,
        disabled: false,
        created_at: t0(),
        updated_at: t0(),
    }
}

pub async fn users_round_trip_and_usernames_are_unique(store: SharedStore) {
    assert_eq!(store.count_users().await.unwrap(), 0);
    let alice = user("alice", Role::Admin);
    let bob = user("bob", Role::Viewer);
    store.create_user(&alice).await.unwrap();
    store.create_user(&bob).await.unwrap();
    assert_eq!(store.count_users().await.unwrap(), 2);
    assert_eq!(store.get_user(alice.id).await.unwrap(), alice);
    assert_eq!(store.find_user("bob").await.unwrap(), Some(bob.clone()));
    assert_eq!(store.find_user("carol").await.unwrap(), None);
    let names: Vec<_> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["alice", "bob"]);

    let err = store
        .create_user(&user("alice", Role::Viewer))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { entity: "user", .. }),
        "{err}"
    );

    let later = t0() + Duration::seconds(5);
    let patch = UserPatch {
        role: Some(Role::Operator),
        disabled: Some(true),
        ..Default::default()
    };
    let changed = store.update_user(bob.id, &patch, later).await.unwrap();
    assert_eq!(changed.role, Role::Operator);
    assert!(changed.disabled);
    assert_eq!(changed.password_hash, bob.password_hash);
    assert_eq!(changed.updated_at, later);
    assert_eq!(store.get_user(bob.id).await.unwrap(), changed);

    let ghost = Uuid::new_v4();
    for err in [
        store.get_user(ghost).await.unwrap_err(),
        store
            .update_user(ghost, &UserPatch::default(), later)
            .await
            .unwrap_err(),
        store.delete_user(ghost).await.unwrap_err(),
    ] {
        assert!(
            matches!(err, StoreError::NotFound { entity: "user", .. }),
            "{err}"
        );
    }
    store.delete_user(bob.id).await.unwrap();
    assert_eq!(store.find_user("bob").await.unwrap(), None);
}

pub async fn refresh_tokens_rotate_once_and_reuse_revokes_the_family(store: SharedStore) {
    let u = user("dana", Role::Operator);
    store.create_user(&u).await.unwrap();
    let session = Uuid::new_v4();
    let expires = t0() + Duration::days(7);
    store
        .create_session(session, u.id, "hash-1", expires, t0())
        .await
        .unwrap();
    let (s, owner) = store.get_session(session).await.unwrap().unwrap();
    assert_eq!((s.id, s.user_id, s.revoked_at), (session, u.id, None));
    assert_eq!(owner, u);

    let now = t0() + Duration::minutes(20);
    match store
        .rotate_refresh_token("hash-1", "hash-2", expires, now)
        .await
        .unwrap()
    {
        RefreshOutcome::Rotated { session_id, user } => {
            assert_eq!(session_id, session);
            assert_eq!(user, u);
        }
        other => panic!("expected a rotation, got {other:?}"),
    }
    // The new token works once more.
    assert!(matches!(
        store
            .rotate_refresh_token("hash-2", "hash-3", expires, now)
            .await
            .unwrap(),
        RefreshOutcome::Rotated { .. }
    ));
    // Replaying a rotated token revokes the family: the current token stops working too.
    assert_eq!(
        store
            .rotate_refresh_token("hash-1", "hash-x", expires, now)
            .await
            .unwrap(),
        RefreshOutcome::Reused {
            session_id: session
        }
    );
    assert!(store
        .get_session(session)
        .await
        .unwrap()
        .unwrap()
        .0
        .revoked_at
        .is_some());
    assert_eq!(
        store
            .rotate_refresh_token("hash-3", "hash-4", expires, now)
            .await
            .unwrap(),
        RefreshOutcome::Revoked
    );
    assert_eq!(
        store
            .rotate_refresh_token("never-issued", "hash-5", expires, now)
            .await
            .unwrap(),
        RefreshOutcome::Unknown
    );

    // Expiry, and logout (revoke) of a second session.
    let other = Uuid::new_v4();
    store
        .create_session(other, u.id, "hash-o1", t0() + Duration::hours(1), t0())
        .await
        .unwrap();
    assert_eq!(
        store
            .rotate_refresh_token("hash-o1", "hash-o2", expires, t0() + Duration::hours(2))
            .await
            .unwrap(),
        RefreshOutcome::Expired
    );
    store.revoke_session(other, now).await.unwrap();
    store
        .revoke_session(other, now + Duration::hours(1))
        .await
        .unwrap();
    let (s, _) = store.get_session(other).await.unwrap().unwrap();
    assert_eq!(
        s.revoked_at,
        Some(now),
        "revoking twice keeps the first time"
    );

    // A session of an unknown user cannot be opened; a deleted user's sessions go with it.
    let err = store
        .create_session(Uuid::new_v4(), Uuid::new_v4(), "hash-z", expires, t0())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    store.delete_user(u.id).await.unwrap();
    assert_eq!(store.get_session(other).await.unwrap(), None);
}

pub async fn concurrent_refreshes_of_one_token_rotate_it_once(store: SharedStore) {
    let u = user("erin", Role::Viewer);
    store.create_user(&u).await.unwrap();
    let session = Uuid::new_v4();
    let expires = t0() + Duration::days(1);
    store
        .create_session(session, u.id, "shared", expires, t0())
        .await
        .unwrap();
    let mut joins = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        joins.push(tokio::spawn(async move {
            store
                .rotate_refresh_token("shared", &format!("next-{i}"), expires, t0())
                .await
                .unwrap()
        }));
    }
    let mut rotated = 0;
    for j in joins {
        match j.await.unwrap() {
            RefreshOutcome::Rotated { .. } => rotated += 1,
            RefreshOutcome::Reused { .. } | RefreshOutcome::Revoked => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(rotated, 1);
}

pub async fn api_keys_round_trip_touch_and_revoke(store: SharedStore) {
    let u = user("frank", Role::Admin);
    store.create_user(&u).await.unwrap();
    let other = user("gina", Role::Viewer);
    store.create_user(&other).await.unwrap();
    let key = |name: &str, owner: Uuid, at| ApiKeyRecord {
        id: Uuid::new_v4(),
        user_id: owner,
        name: name.to_string(),
        role: Role::Operator,
        key_hash: format!("hash-{name}"),
        prefix: "phx_abcd".to_string(),
        created_at: at,
        expires_at: Some(t0() + Duration::days(30)),
        last_used_at: None,
        revoked_at: None,
    };
    let k1 = key("ci", u.id, t0());
    let k2 = key("deploy", u.id, t0() + Duration::seconds(1));
    let k3 = key("gina", other.id, t0() + Duration::seconds(2));
    for k in [&k1, &k2, &k3] {
        store.create_api_key(k).await.unwrap();
    }
    assert_eq!(
        store.find_api_key("hash-ci").await.unwrap(),
        Some(k1.clone())
    );
    assert_eq!(store.find_api_key("hash-none").await.unwrap(), None);
    let mine: Vec<_> = store
        .list_api_keys(Some(u.id))
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(mine, ["deploy", "ci"], "newest first, only the owner's");
    assert_eq!(store.list_api_keys(None).await.unwrap().len(), 3);

    let used = t0() + Duration::minutes(3);
    store.touch_api_key(k1.id, used).await.unwrap();
    assert_eq!(
        store.get_api_key(k1.id).await.unwrap().last_used_at,
        Some(used)
    );
    store.revoke_api_key(k1.id, used).await.unwrap();
    store
        .revoke_api_key(k1.id, used + Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(
        store.get_api_key(k1.id).await.unwrap().revoked_at,
        Some(used)
    );
    let ghost = Uuid::new_v4();
    assert!(matches!(
        store.revoke_api_key(ghost, used).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    assert!(matches!(
        store.get_api_key(ghost).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    let err = store
        .create_api_key(&key("orphan", Uuid::new_v4(), t0()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

    // Keys go with their user.
    store.delete_user(other.id).await.unwrap();
    assert_eq!(store.find_api_key("hash-gina").await.unwrap(), None);
}

pub async fn enrollment_tokens_count_uses_and_refuse_expired_exhausted_or_revoked(
    store: SharedStore,
) {
    let token = |name: &str, at, expires_at, max_uses| EnrollmentTokenRecord {
        id: Uuid::new_v4(),
        name: name.to_string(),
        token_hash: format!("hash-{name}"),
        prefix: "pet_1234".to_string(),
        created_by: Some("admin".to_string()),
        created_at: at,
        expires_at,
        max_uses,
        use_count: 0,
        revoked_at: None,
    };
    let twice = token("twice", t0(), None, Some(2));
    let brief = token(
        "brief",
        t0() + Duration::seconds(1),
        Some(t0() + Duration::hours(1)),
        None,
    );
    let open = token("open", t0() + Duration::seconds(2), None, None);
    for t in [&twice, &brief, &open] {
        store.create_enrollment_token(t).await.unwrap();
    }
    let names: Vec<_> = store
        .list_enrollment_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["open", "brief", "twice"]);

    let now = t0() + Duration::minutes(1);
    let accepted = EnrollmentTokenUse::Accepted { token_id: twice.id };
    assert_eq!(
        store.use_enrollment_token("hash-twice", now).await.unwrap(),
        accepted
    );
    assert_eq!(
        store.use_enrollment_token("hash-twice", now).await.unwrap(),
        accepted
    );
    assert_eq!(
        store.use_enrollment_token("hash-twice", now).await.unwrap(),
        EnrollmentTokenUse::Exhausted
    );
    assert_eq!(
        store
            .get_enrollment_token(twice.id)
            .await
            .unwrap()
            .use_count,
        2
    );
    assert_eq!(
        store
            .use_enrollment_token("hash-brief", t0() + Duration::hours(2))
            .await
            .unwrap(),
        EnrollmentTokenUse::Expired
    );
    assert_eq!(
        store.use_enrollment_token("hash-nope", now).await.unwrap(),
        EnrollmentTokenUse::Unknown
    );
    store.revoke_enrollment_token(open.id, now).await.unwrap();
    assert_eq!(
        store.use_enrollment_token("hash-open", now).await.unwrap(),
        EnrollmentTokenUse::Revoked
    );
    let stored = store.get_enrollment_token(open.id).await.unwrap();
    assert_eq!((stored.revoked_at, stored.use_count), (Some(now), 0));
    assert!(matches!(
        store
            .revoke_enrollment_token(Uuid::new_v4(), now)
            .await
            .unwrap_err(),
        StoreError::NotFound { .. }
    ));

    // Concurrent enrollments never pass max_uses.
    let five = token("five", t0(), None, Some(5));
    store.create_enrollment_token(&five).await.unwrap();
    let mut joins = Vec::new();
    for _ in 0..12 {
        let store = Arc::clone(&store);
        joins.push(tokio::spawn(async move {
            store.use_enrollment_token("hash-five", now).await.unwrap()
        }));
    }
    let mut accepted = 0;
    for j in joins {
        if matches!(j.await.unwrap(), EnrollmentTokenUse::Accepted { .. }) {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 5);
    assert_eq!(
        store.get_enrollment_token(five.id).await.unwrap().use_count,
        5
    );
}
