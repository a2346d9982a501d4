//! Staff accounts: added from the command line with the password on standard input, signed in
//! with a username and password for a staff token, disabled; failed sign-ins slowed down per
//! username and per address.

use memberline_tests::process::{app_env, binary};
use memberline_tests::{TestApp, spawn_app};
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};

/// `memberline staff …` against the app's database, `stdin` on its standard input.
fn staff_command(app: &TestApp, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(binary("memberline"))
        .env_clear()
        .envs(app_env(app))
        .arg("staff")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("memberline runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

async fn sign_in(app: &TestApp, username: &str, password: &str) -> (u16, Value, Option<String>) {
    app.post_signed_out(
        "/v1/auth/staff",
        json!({"username": username, "password": password}),
    )
    .await
}

#[tokio::test]
async fn an_admin_added_on_the_command_line_signs_in_and_is_refused_once_disabled() {
    let app = spawn_app().await;
    let added = staff_command(
        &app,
        &["add", "--username", "dana", "--role", "admin"],
        "a long enough secret\n",
    );
    assert!(added.status.success(), "{added:?}");
    let stdout = String::from_utf8_lossy(&added.stdout);
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(
        !stdout.contains("a long enough secret") && !stderr.contains("a long enough secret"),
        "the password is never printed"
    );
    let hash = app
        .text_scalar("SELECT password_hash FROM staff WHERE username = 'dana'")
        .await;
    assert!(hash.starts_with("$argon2id$"), "{hash}");

    let (status, signed_in, _) = sign_in(&app, "dana", "a long enough secret").await;
    assert_eq!(status, 200, "{signed_in}");
    assert_eq!(signed_in["staff"]["role"], "admin");
    // The token is an admin's: it reads the audit log.
    let (status, _) = app
        .get(signed_in["token"].as_str(), "/v1/admin/audit")
        .await;
    assert_eq!(status, 200);

    let again = staff_command(
        &app,
        &["add", "--username", "dana", "--role", "merchant"],
        "another long secret\n",
    );
    assert!(!again.status.success(), "a username is taken once");
    let short = staff_command(
        &app,
        &["add", "--username", "eve", "--role", "admin"],
        "short\n",
    );
    assert!(!short.status.success(), "a short password is refused");

    let disabled = staff_command(&app, &["disable", "--username", "dana"], "");
    assert!(disabled.status.success(), "{disabled:?}");
    let (status, refused, _) = sign_in(&app, "dana", "a long enough secret").await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (401, json!("invalid_credentials"))
    );
    // The token she got before is refused too, at once, and the audit log named her.
    let (status, refused) = app
        .get(signed_in["token"].as_str(), "/v1/admin/audit")
        .await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (401, json!("invalid_token"))
    );
    let (status, _) = app
        .call(
            reqwest::Method::PATCH,
            "/v1/admin/levels/0",
            signed_in["token"].as_str().unwrap(),
            None,
            json!({"name": "Starter"}),
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_audit_log_names_the_staff_member_who_acted() {
    let app = spawn_app().await;
    let added = staff_command(
        &app,
        &["add", "--username", "omar", "--role", "admin"],
        "a long enough secret\n",
    );
    assert!(added.status.success(), "{added:?}");
    let (_, signed_in, _) = sign_in(&app, "omar", "a long enough secret").await;
    let token = signed_in["token"].as_str().unwrap();
    let (status, _) = app
        .call(
            reqwest::Method::PATCH,
            "/v1/admin/levels/0",
            token,
            None,
            json!({"name": "Starter"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, page) = app.get(Some(token), "/v1/admin/audit").await;
    assert_eq!(page["entries"][0]["action"], "level_update");
    assert_eq!(page["entries"][0]["actor_name"], "omar");
    assert_eq!(page["entries"][0]["actor_id"], signed_in["staff"]["id"]);
}

#[tokio::test]
async fn failed_sign_ins_are_limited_per_username_and_per_address() {
    let app = spawn_app().await;
    let added = staff_command(
        &app,
        &["add", "--username", "moe", "--role", "merchant"],
        "mo's proper password\n",
    );
    assert!(added.status.success(), "{added:?}");
    // An unknown username and a wrong password answer the same.
    let (status, unknown, _) = sign_in(&app, "nobody", "whatever it is").await;
    assert_eq!(
        (status, unknown["error"]["code"].clone()),
        (401, json!("invalid_credentials"))
    );
    for _ in 0..5 {
        let (status, _, _) = sign_in(&app, "moe", "a wrong guess").await;
        assert_eq!(status, 401);
    }
    // Five failures in the window: even the right password waits now.
    let (status, limited, retry_after) = sign_in(&app, "moe", "mo's proper password").await;
    assert_eq!(
        (status, limited["error"]["code"].clone()),
        (429, json!("too_many_sign_in_failures")),
        "{limited}"
    );
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=900).contains(&secs), "{secs}");

    // Another username from the same address still signs in, until the address has failed 20
    // times (the 6 above count).
    let added = staff_command(
        &app,
        &["add", "--username", "kim", "--role", "merchant"],
        "kim's proper password\n",
    );
    assert!(added.status.success());
    let (status, _, _) = sign_in(&app, "kim", "kim's proper password").await;
    assert_eq!(status, 200);
    for i in 0..14 {
        let (status, _, _) = sign_in(&app, &format!("guess{i}"), "a wrong guess").await;
        assert_eq!(status, 401, "failure {i}");
    }
    let (status, limited, _) = sign_in(&app, "kim", "kim's proper password").await;
    assert_eq!(
        (status, limited["error"]["code"].clone()),
        (429, json!("too_many_sign_in_failures"))
    );
}
