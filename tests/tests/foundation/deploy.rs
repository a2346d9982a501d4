//! Deploy files agree with the code: RabbitMQ definitions, config files, bad environment values,
//! and the Kubernetes manifests (real binaries with real settings, the ports they listen on, the
//! queues they consume, the replicated broker and database they reach).

use memberline_platform::Settings;
use memberline_platform::settings::{is_known_key, key_of_variable};
use memberline_schema::topology::Worker;
use std::collections::BTreeMap;
use std::path::Path;
use yaml_rust2::{Yaml, YamlLoader};

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

/// Every document of every file under `deploy/k8s/`, with its file's name. Any file that is not
/// YAML fails here, with its name.
fn k8s_objects() -> Vec<(String, Yaml)> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let docs = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
        objects.extend(
            docs.into_iter()
                .filter(|d| !d.is_null())
                .map(|d| (file.clone(), d)),
        );
    }
    objects
}

fn kind(doc: &Yaml) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Yaml) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

/// The string entries of a YAML mapping (labels, selectors, stringData).
fn string_map(yaml: &Yaml) -> BTreeMap<String, String> {
    let Some(hash) = yaml.as_hash() else {
        return BTreeMap::new();
    };
    hash.iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
        .collect()
}

fn strings(yaml: &Yaml) -> Vec<String> {
    let Some(list) = yaml.as_vec() else {
        return Vec::new();
    };
    list.iter()
        .map(|s| s.as_str().expect("a list of strings").to_owned())
        .collect()
}

/// The pod template of a workload (Deployment, Job, …); `BadValue` for other kinds.
fn pod_template(doc: &Yaml) -> &Yaml {
    match kind(doc) {
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"],
        _ => &doc["spec"]["template"],
    }
}

fn containers(doc: &Yaml) -> &[Yaml] {
    pod_template(doc)["spec"]["containers"]
        .as_vec()
        .map_or(&[], Vec::as_slice)
}

/// Whether a container runs our image (the others, the operators' tools, are not ours to check).
fn is_ours(container: &Yaml) -> bool {
    container["image"]
        .as_str()
        .is_some_and(|image| image.starts_with("memberline:"))
}

/// The workloads of `file` whose pods carry every label of `selector`.
fn selected<'a>(
    objects: &'a [(String, Yaml)],
    file: &str,
    selector: &BTreeMap<String, String>,
) -> Vec<&'a Yaml> {
    objects
        .iter()
        .filter(|(f, doc)| f == file && !containers(doc).is_empty())
        .map(|(_, doc)| doc)
        .filter(|doc| {
            let labels = string_map(&pod_template(doc)["metadata"]["labels"]);
            !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect()
}

/// What every process gets through `envFrom: memberline-secrets`: the example's stringData.
fn example_secret(objects: &[(String, Yaml)]) -> BTreeMap<String, String> {
    let (_, secret) = objects
        .iter()
        .find(|(f, doc)| f == "secrets.example.yaml" && kind(doc) == "Secret")
        .expect("secrets.example.yaml holds the Secret");
    assert_eq!(name(secret), "memberline-secrets");
    string_map(&secret["stringData"])
}

/// A container's environment: the Secret it reads, then its own `env` (which wins).
fn environment(
    file: &str,
    container: &Yaml,
    secret: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for source in container["envFrom"].as_vec().into_iter().flatten() {
        let from = source["secretRef"]["name"].as_str();
        assert_eq!(
            from,
            Some("memberline-secrets"),
            "{file}: envFrom {source:?}"
        );
        vars.extend(secret.clone());
    }
    for var in container["env"].as_vec().into_iter().flatten() {
        let key = var["name"].as_str().expect("env entries have a name");
        if var["valueFrom"].is_badvalue() {
            let value = var["value"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: {key} must be a quoted string"));
            vars.insert(key.to_owned(), value.to_owned());
        }
    }
    vars
}

/// The environment the image names (`ENV MEMBERLINE_ENV=…` in the Dockerfile).
fn image_environment() -> String {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let at = dockerfile
        .find("MEMBERLINE_ENV=")
        .expect("the image sets MEMBERLINE_ENV");
    dockerfile[at + "MEMBERLINE_ENV=".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The settings a container of ours starts with: the image's config files and environment,
/// then its variables. Every `MEMBERLINE__…` variable must name a setting.
fn settings_of(file: &str, vars: &BTreeMap<String, String>) -> Settings {
    for var in vars.keys() {
        if let Some(key) = key_of_variable(var) {
            assert!(is_known_key(&key), "{file}: {var} sets no setting ({key})");
        }
    }
    let env = vars
        .get("MEMBERLINE_ENV")
        .cloned()
        .unwrap_or_else(image_environment);
    let dir = repo().join("deploy/config");
    Settings::load_from(Some(&dir), &env, vars.clone())
        .unwrap_or_else(|e| panic!("{file}: the settings do not load: {e}"))
}

/// What a process listens on, per its settings: the setting, its port, the paths served there.
struct Listener {
    setting: &'static str,
    port: u16,
    paths: &'static [&'static str],
}

/// The worker binaries and the workers each runs.
fn workers_of(binary: &str) -> Vec<Worker> {
    match binary {
        "memberline-workers" => Worker::ALL.to_vec(),
        _ => binary
            .strip_suffix("-worker")
            .and_then(Worker::parse)
            .into_iter()
            .collect(),
    }
}

/// Where `binary args` listens: the gateway's API (`http.*`, with /healthz), the standalone
/// relay's and the workers' operations endpoints; nothing for one-off commands.
fn listeners(file: &str, binary: &str, args: &[String], settings: &Settings) -> Vec<Listener> {
    const API: &[&str] = &["/healthz", "/readyz", "/metrics"];
    const OPS: &[&str] = &["/readyz", "/metrics"];
    let http = format!("{}:{}", settings.http.host, settings.http.port);
    let (setting, addr, paths) = match (binary, args.first().map(String::as_str)) {
        ("memberline", None | Some("serve")) => ("http.host, http.port", http, API),
        ("memberline", Some("relay")) => (
            "relay.metrics_addr",
            settings.relay.metrics_addr.clone(),
            OPS,
        ),
        (worker, _) if !workers_of(worker).is_empty() => (
            "workers.metrics_addr",
            settings.workers.metrics_addr.clone(),
            OPS,
        ),
        _ => return Vec::new(),
    };
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Vec::new();
    };
    assert!(
        !["127.0.0.1", "localhost", "[::1]"].contains(&host),
        "{file}: {binary} listens on loopback {addr} ({setting}): no probe or Service reaches it"
    );
    let port = port
        .parse()
        .unwrap_or_else(|e| panic!("{file}: {setting} = {addr}: {e}"));
    vec![Listener {
        setting,
        port,
        paths,
    }]
}

/// The port a probe or Service names: a number, or the name of one of `ports`.
fn resolve_port(port: &Yaml, ports: &[Yaml]) -> Option<i64> {
    match port {
        Yaml::Integer(n) => Some(*n),
        Yaml::String(named) => ports
            .iter()
            .find(|p| p["name"].as_str() == Some(named))
            .and_then(|p| p["containerPort"].as_i64()),
        _ => None,
    }
}

/// Each container of ours: its binary, its settings, and every port it declares or is probed on
/// is one it listens on.
fn check_container(file: &str, container: &Yaml, secret: &BTreeMap<String, String>) -> String {
    let mut binaries = binaries_of("gateway/Cargo.toml");
    binaries.extend(binaries_of("workers/Cargo.toml"));
    let command = strings(&container["command"]);
    let args = strings(&container["args"]);
    let binary = command.first().cloned().unwrap_or_default();
    assert!(
        binaries.contains(&binary),
        "{file}: {binary:?} is not a binary"
    );
    if binary == "memberline" {
        let first = args.first().map_or("serve", String::as_str);
        assert!(
            ["serve", "relay", "migrate"].contains(&first),
            "{file}: unknown subcommand {first}"
        );
    }
    let settings = settings_of(file, &environment(file, container, secret));
    let listening = listeners(file, &binary, &args, &settings);
    let ports = container["ports"].as_vec().map_or(&[][..], Vec::as_slice);
    for port in ports {
        let number = port["containerPort"]
            .as_i64()
            .expect("a numeric containerPort");
        assert!(
            listening.iter().any(|l| i64::from(l.port) == number),
            "{file}: {binary} declares port {number} but listens on {:?}",
            listening
                .iter()
                .map(|l| (l.setting, l.port))
                .collect::<Vec<_>>()
        );
    }
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let probe = &container[probe];
        if probe.is_badvalue() {
            continue;
        }
        let (action, path) = match &probe["httpGet"] {
            Yaml::BadValue => (&probe["tcpSocket"], None),
            http => (http, http["path"].as_str()),
        };
        let port = resolve_port(&action["port"], ports);
        let Some(listener) = listening.iter().find(|l| Some(i64::from(l.port)) == port) else {
            panic!(
                "{file}: {binary} is probed on {:?}, where it does not listen",
                action["port"]
            );
        };
        if let Some(path) = path {
            assert!(
                listener.paths.contains(&path),
                "{file}: {binary} serves no {path} on {} ({})",
                listener.port,
                listener.setting
            );
        }
    }
    binary
}

#[test]
fn every_kubernetes_file_is_yaml_and_names_its_objects() {
    let objects = k8s_objects();
    assert!(objects.len() >= 10, "{}", objects.len());
    for (file, doc) in &objects {
        assert!(
            doc["apiVersion"].as_str().is_some() && !kind(doc).is_empty() && !name(doc).is_empty(),
            "{file}: an object without apiVersion, kind or metadata.name"
        );
    }
}

#[test]
fn every_kubernetes_container_of_ours_runs_a_real_binary_with_real_settings_on_its_ports() {
    let objects = k8s_objects();
    let secret = example_secret(&objects);
    for var in secret.keys() {
        let key = key_of_variable(var).unwrap_or_else(|| panic!("{var} is no setting"));
        assert!(
            is_known_key(&key),
            "secrets.example.yaml: {var} sets no setting ({key})"
        );
    }
    // Variables named in comments too: a reader copies them.
    let mut files: Vec<&String> = objects.iter().map(|(file, _)| file).collect();
    files.dedup();
    for file in files {
        let text = std::fs::read_to_string(repo().join("deploy/k8s").join(file)).unwrap();
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(key) = key_of_variable(word) {
                assert!(is_known_key(&key), "{file}: {word} sets no setting ({key})");
            }
        }
    }
    let mut commands = Vec::new();
    for (file, doc) in &objects {
        for container in containers(doc).iter().filter(|c| is_ours(c)) {
            commands.push(check_container(file, container, &secret));
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
}

#[test]
fn every_service_budget_and_scaler_targets_pods_and_queues_that_exist() {
    let objects = k8s_objects();
    let secret = example_secret(&objects);
    for (file, doc) in &objects {
        match kind(doc) {
            "Service" => {
                let pods = selected(&objects, file, &string_map(&doc["spec"]["selector"]));
                assert!(
                    !pods.is_empty(),
                    "{file}: Service {} selects no pods",
                    name(doc)
                );
                for port in doc["spec"]["ports"].as_vec().into_iter().flatten() {
                    let target = match &port["targetPort"] {
                        Yaml::BadValue => &port["port"],
                        target => target,
                    };
                    let reached = pods.iter().flat_map(|p| containers(p)).any(|c| {
                        let ports = c["ports"].as_vec().map_or(&[][..], Vec::as_slice);
                        let number = resolve_port(target, ports);
                        number.is_some()
                            && ports.iter().any(|p| p["containerPort"].as_i64() == number)
                    });
                    assert!(
                        reached,
                        "{file}: Service {} targets {target:?}, no container's port",
                        name(doc)
                    );
                }
            }
            "PodDisruptionBudget" => {
                let selector = string_map(&doc["spec"]["selector"]["matchLabels"]);
                // The RabbitMQ operator labels its pods with the cluster's name.
                let broker = objects.iter().any(|(f, o)| {
                    f == file
                        && kind(o) == "RabbitmqCluster"
                        && selector.get("app.kubernetes.io/name").map(String::as_str)
                            == Some(name(o))
                });
                assert!(
                    broker || !selected(&objects, file, &selector).is_empty(),
                    "{file}: PodDisruptionBudget {} selects no pods",
                    name(doc)
                );
            }
            "ScaledObject" => check_scaler(&objects, file, doc, &secret),
            _ => {}
        }
    }
}

/// A KEDA ScaledObject scales a workers Deployment of its file on exactly the queues it consumes,
/// with credentials from the processes' Secret, and the Deployment leaves the count to it.
fn check_scaler(
    objects: &[(String, Yaml)],
    file: &str,
    scaler: &Yaml,
    secret: &BTreeMap<String, String>,
) {
    let target = scaler["spec"]["scaleTargetRef"]["name"]
        .as_str()
        .unwrap_or_default();
    let find = |k: &str, n: &str| {
        objects
            .iter()
            .find(|(f, o)| f == file && kind(o) == k && name(o) == n)
            .map(|(_, o)| o)
            .unwrap_or_else(|| panic!("{file}: {} names {k} {n}, not in the file", name(scaler)))
    };
    let deployment = find("Deployment", target);
    assert!(
        deployment["spec"]["replicas"].is_badvalue(),
        "{file}: {target} sets replicas, which would reset the scaler's count at every apply"
    );
    let container = &containers(deployment)[0];
    let binary = strings(&container["command"]).remove(0);
    let topology = settings_of(file, &environment(file, container, secret)).topology();
    let mut consumed: Vec<String> = workers_of(&binary)
        .into_iter()
        .map(|w| topology.work_queue(w))
        .collect();
    let mut triggered = Vec::new();
    for trigger in scaler["spec"]["triggers"].as_vec().into_iter().flatten() {
        assert_eq!(
            trigger["type"].as_str(),
            Some("rabbitmq"),
            "{file}: {}",
            name(scaler)
        );
        triggered.push(
            trigger["metadata"]["queueName"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        let auth = find(
            "TriggerAuthentication",
            trigger["authenticationRef"]["name"]
                .as_str()
                .unwrap_or_default(),
        );
        for reference in auth["spec"]["secretTargetRef"]
            .as_vec()
            .into_iter()
            .flatten()
        {
            assert_eq!(
                reference["name"].as_str(),
                Some("memberline-secrets"),
                "{file}"
            );
            let key = reference["key"].as_str().unwrap_or_default();
            assert!(secret.contains_key(key), "{file}: the Secret has no {key}");
        }
    }
    consumed.sort();
    triggered.sort();
    assert_eq!(
        triggered,
        consumed,
        "{file}: ScaledObject {} must trigger on the queues {binary} consumes (right)",
        name(scaler)
    );
}

#[test]
fn the_manifests_run_a_three_node_broker_a_synchronous_database_and_replicated_processes() {
    let objects = k8s_objects();
    let secret = example_secret(&objects);
    let one = |k: &str| {
        let found: Vec<_> = objects
            .iter()
            .filter(|(_, o)| kind(o) == k)
            .map(|(_, o)| o)
            .collect();
        assert_eq!(found.len(), 1, "one {k}");
        found[0]
    };
    let broker = one("RabbitmqCluster");
    assert_eq!(broker["apiVersion"].as_str(), Some("rabbitmq.com/v1beta1"));
    assert_eq!(broker["spec"]["replicas"].as_i64(), Some(3));
    let config = broker["spec"]["rabbitmq"]["additionalConfig"]
        .as_str()
        .unwrap_or_default();
    assert!(
        config.contains("quorum_queue.initial_cluster_size = 3"),
        "{config}"
    );
    let database = one("Cluster");
    assert_eq!(
        database["apiVersion"].as_str(),
        Some("postgresql.cnpg.io/v1")
    );
    assert!(database["spec"]["instances"].as_i64() >= Some(3));
    let synchronous = &database["spec"]["postgresql"]["synchronous"];
    assert!(
        synchronous["number"].as_i64() >= Some(1),
        "a standby confirms every commit: {synchronous:?}"
    );
    let host = |var: &str| {
        let url = reqwest::Url::parse(&secret[var]).unwrap();
        url.host_str().unwrap().to_owned()
    };
    let rw = format!("{}-rw", name(database));
    let db_host = host("MEMBERLINE__DATABASE__URL");
    assert!(
        db_host == rw || db_host.starts_with(&format!("{rw}.")),
        "the database URL names {db_host}, not CloudNativePG's read-write Service {rw}"
    );
    let amqp_host = host("MEMBERLINE__AMQP__URL");
    assert!(
        amqp_host.starts_with(&format!("{}.", name(broker))) && amqp_host.ends_with(".svc"),
        "the broker's client Service, <name>.<namespace>.svc: {amqp_host}"
    );
    for (file, doc) in objects.iter().filter(|(_, o)| kind(o) == "Deployment") {
        let budgeted = objects.iter().any(|(f, o)| {
            kind(o) == "PodDisruptionBudget"
                && selected(
                    &objects,
                    f,
                    &string_map(&o["spec"]["selector"]["matchLabels"]),
                )
                .iter()
                .any(|d| name(d) == name(doc))
        });
        assert!(budgeted, "{file}: {} has no PodDisruptionBudget", name(doc));
        let container = &containers(doc)[0];
        let serves = strings(&container["command"]) == ["memberline"]
            && strings(&container["args"])
                .first()
                .is_none_or(|a| a == "serve");
        if serves {
            assert!(
                doc["spec"]["replicas"].as_i64() >= Some(2),
                "{file}: at least two gateways"
            );
            let settings = settings_of(file, &environment(file, container, &secret));
            assert!(
                settings.relay.embedded,
                "{file}: each gateway embeds a relay"
            );
        }
    }
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
