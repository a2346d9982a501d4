//! The settings' own tests: defaults, overrides, and every refusal naming its key.

use super::*;

fn load(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
    load_env("test", vars)
}

fn load_env(env: &str, vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
    Settings::load_from(
        None,
        env,
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn defaults_load_without_any_file() {
    let s = load(&[]).unwrap();
    assert_eq!(s.http.port, 8080);
    assert_eq!(s.amqp.retry_delays_ms.len(), 5);
}

#[test]
fn environment_variables_override_defaults() {
    let s = load(&[
        ("MEMBERLINE__HTTP__PORT", "9001"),
        ("MEMBERLINE__LOG__FORMAT", "json"),
        ("MEMBERLINE__AMQP__RETRY_DELAYS_MS", "5,50"),
    ])
    .unwrap();
    assert_eq!(s.http.port, 9001);
    assert_eq!(s.log.format, LogFormat::Json);
    assert_eq!(s.amqp.retry_delays_ms, vec![5, 50]);
}

#[test]
fn a_bad_value_names_its_key() {
    let err = load(&[("MEMBERLINE__HTTP__PORT", "eighty")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("http.port"), "{err}");
    let err = load(&[("MEMBERLINE__LOG__FORMAT", "xml")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("log.format"), "{err}");
    let err = load(&[("MEMBERLINE__AUTH__JWT_SECRET", "short")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("auth.jwt_secret"), "{err}");
    let err = load(&[("MEMBERLINE__RELAY__LINGER_MS", "5000")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("relay.linger_ms"), "{err}");
    let err = load(&[("MEMBERLINE__WORKERS__BATCH_MAX", "0")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("workers.batch_max"), "{err}");
    for (key, value, name) in [
        ("MEMBERLINE__LANES__COUNT", "0", "lanes.count"),
        ("MEMBERLINE__LANES__BATCH_MAX", "0", "lanes.batch_max"),
        ("MEMBERLINE__LANES__BATCH_MAX", "1000", "lanes.batch_max"),
    ] {
        let err = load(&[(key, value)]).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn no_secret_is_compiled_in_and_the_gateway_key_is_required_by_name() {
    let s = load(&[]).unwrap();
    let err = s.auth.signing_secret().unwrap_err().to_string();
    assert!(err.contains("auth.jwt_secret"), "{err}");
    assert!(s.workers.webhook_secret.expose().is_empty());
}

#[test]
fn the_committed_development_secrets_are_refused_outside_local() {
    let dev = [("MEMBERLINE__AUTH__JWT_SECRET", LOCAL_ONLY_SECRETS[0])];
    assert!(load_env("local", &dev).is_ok());
    let err = load_env("production", &dev).unwrap_err().to_string();
    assert!(err.contains("auth.jwt_secret"), "{err}");
    let webhook = [
        ("MEMBERLINE__WORKERS__CHANNEL", "webhook"),
        (
            "MEMBERLINE__WORKERS__WEBHOOK_URL",
            "https://example.test/hook",
        ),
        ("MEMBERLINE__WORKERS__WEBHOOK_SECRET", LOCAL_ONLY_SECRETS[1]),
    ];
    assert!(load_env("local", &webhook).is_ok());
    let err = load_env("production", &webhook).unwrap_err().to_string();
    assert!(err.contains("workers.webhook_secret"), "{err}");
}

#[test]
fn a_webhook_channel_needs_a_key_of_adequate_length() {
    let err = load(&[
        ("MEMBERLINE__WORKERS__CHANNEL", "webhook"),
        (
            "MEMBERLINE__WORKERS__WEBHOOK_URL",
            "https://example.test/hook",
        ),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("workers.webhook_secret"), "{err}");
    let err = load(&[
        ("MEMBERLINE__WORKERS__CHANNEL", "webhook"),
        (
            "MEMBERLINE__WORKERS__WEBHOOK_URL",
            "https://example.test/hook",
        ),
        ("MEMBERLINE__WORKERS__WEBHOOK_SECRET", "whsec_c2hvcnQ="),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("workers.webhook_secret"), "{err}");
}

#[test]
fn secrets_never_show_in_debug_output() {
    let s = load(&[(
        "MEMBERLINE__AUTH__JWT_SECRET",
        "a-secret-of-our-own-at-least-32-bytes",
    )])
    .unwrap();
    let printed = format!("{s:?}");
    assert!(!printed.contains(s.auth.jwt_secret.expose()));
    assert!(!printed.contains("guest:guest"));
}

#[test]
fn the_purchase_and_notification_lanes_must_leave_room_in_the_pool_for_other_requests() {
    let s = load(&[]).unwrap();
    assert!(
        s.lanes.fit(s.database.max_connections).is_ok(),
        "the defaults fit"
    );
    let s = load(&[("MEMBERLINE__LANES__COUNT", "5")]).unwrap();
    let err = s.lanes.fit(10).unwrap_err().to_string();
    assert!(
        err.contains("lanes.count") && err.contains("at most 4"),
        "{err}"
    );
    assert!(s.lanes.fit(12).is_ok());
}
