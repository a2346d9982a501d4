use memberline_gateway::Settings;
use std::path::Path;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn the_committed_rabbitmq_definitions_match_the_codes_topology() {
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/rabbitmq/definitions.json")).unwrap(),
    )
    .unwrap();
    let settings = Settings::load_from(None, "test", std::iter::empty()).unwrap();
    assert_eq!(
        committed,
        settings.topology().definitions(),
        "run `make topology` and commit the result"
    );
}

#[test]
fn every_deploy_config_file_loads() {
    for env in ["local", "production"] {
        let settings =
            Settings::load_from(Some(&repo().join("deploy/config")), env, std::iter::empty())
                .unwrap_or_else(|e| panic!("{env}: {e}"));
        assert_eq!(settings.amqp.prefix, "memberline");
    }
}

#[test]
fn a_bad_environment_value_stops_with_the_keys_name() {
    let err = Settings::load_from(
        None,
        "test",
        [(
            "MEMBERLINE__RELAY__BATCH_SIZE".to_owned(),
            "lots".to_owned(),
        )],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("relay.batch_size"), "{err}");
}
