//! Deploy files agree with the code: RabbitMQ definitions, config files, bad environment values.

use memberline_platform::Settings;
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

/// The `[[bin]]` names of a crate's manifest.
fn binaries_of(manifest: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(manifest)).unwrap();
    text.split("[[bin]]")
        .skip(1)
        .filter_map(|section| {
            let line = section
                .lines()
                .find(|l| l.trim_start().starts_with("name"))?;
            Some(line.split('"').nth(1)?.to_owned())
        })
        .collect()
}

/// Every file under `deploy/k8s/`, with its text.
fn manifests() -> Vec<(String, String)> {
    std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The quoted strings of a flow list such as `command: ["memberline"]`.
fn flow_list(line: &str) -> Vec<String> {
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_image_carries_every_binary_and_the_readme_names_only_real_ones() {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let mut binaries = binaries_of("gateway/Cargo.toml");
    binaries.extend(binaries_of("workers/Cargo.toml"));
    assert!(binaries.len() >= 7, "{binaries:?}");
    for bin in &binaries {
        assert!(
            dockerfile.contains(&format!("/src/target/release/{bin} /usr/local/bin/")),
            "the image lacks {bin}"
        );
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for named in ["memberline", "memberline-workers", "memberline-dlq"] {
        assert!(readme.contains(named), "README names {named}");
        assert!(binaries.iter().any(|b| b == named), "{named} is a binary");
    }
    for bin in binaries.iter().filter(|b| b.ends_with("-worker")) {
        assert!(readme.contains(bin.as_str()), "README names {bin}");
    }
}

#[test]
fn every_kubernetes_object_runs_a_real_binary_with_real_settings() {
    let mut binaries = binaries_of("gateway/Cargo.toml");
    binaries.extend(binaries_of("workers/Cargo.toml"));
    let subcommands = ["serve", "relay", "migrate"];
    let mut commands = Vec::new();
    for (file, text) in manifests() {
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("command:") {
                let command = flow_list(rest);
                assert!(
                    binaries.contains(&command[0]),
                    "{file}: {} is not a binary",
                    command[0]
                );
                commands.push(command[0].clone());
            }
            if let Some(rest) = line.strip_prefix("args:") {
                let args = flow_list(rest);
                assert!(
                    subcommands.contains(&args[0].as_str()),
                    "{file}: unknown subcommand {}",
                    args[0]
                );
            }
            for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(key) = memberline_platform::settings::key_of_variable(word) {
                    assert!(
                        memberline_platform::settings::is_known_key(&key),
                        "{file}: {word} sets no setting ({key})"
                    );
                }
            }
        }
    }
    for needed in [
        "memberline",
        "memberline-workers",
        "membership-worker",
        "ledger-worker",
        "notifier-worker",
        "savings-worker",
    ] {
        assert!(
            commands.iter().any(|c| c == needed),
            "no Deployment runs {needed}"
        );
    }
    let relay = &manifests()
        .into_iter()
        .find(|(f, _)| f == "relay.yaml")
        .unwrap()
        .1;
    assert!(relay.contains("path: /readyz"));
    assert!(
        !relay.contains("8080"),
        "the relay needs no port of the API"
    );
}

#[test]
fn an_unnamed_environment_never_reads_the_development_secrets() {
    let dir = repo().join("deploy/config");
    let local = Settings::load_from(Some(&dir), "local", std::iter::empty()).unwrap();
    assert!(
        local.auth.signing_secret().is_ok(),
        "make run has its dev secret"
    );
    let unnamed = Settings::load_from(Some(&dir), "", std::iter::empty()).unwrap();
    let err = unnamed.auth.signing_secret().unwrap_err().to_string();
    assert!(err.contains("auth.jwt_secret"), "{err}");
}
