//! deploy/fleet.yaml keeps the fleet's shutdown contract and reaches
//! PostgreSQL through a Secret (no server needed).

use serde_yaml::Value;

fn docs() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/fleet.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

#[test]
fn fleet_deployment_drains_within_the_grace_period_and_reads_the_url_from_a_secret() {
    let docs = docs();
    let dep = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    assert!(get(dep, "spec.replicas").as_u64().unwrap() > 1);
    let pod = get(dep, "spec.template.spec");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let c = get(pod, "containers.0");
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "work");
    for flag in ["--pg", "--journal", "--sink", "--ledger"] {
        assert!(args.contains(&flag), "missing {flag}: {args:?}");
    }
    let env = |name: &str| {
        c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("env {name}"))
            .clone()
    };
    let timeout: u64 = env("SHUTDOWN_TIMEOUT")["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        timeout + 5 <= grace,
        "SHUTDOWN_TIMEOUT {timeout} vs grace {grace}"
    );
    let url = env("AGENTWAL_PG_URL");
    let secret = get(&url, "valueFrom.secretKeyRef.name").as_str().unwrap();
    assert!(docs
        .iter()
        .any(|d| d["kind"] == "Secret" && get(d, "metadata.name") == secret));
    assert!(env("AGENTWAL_FLEET_LEASE_MS")["value"].as_str().is_some());
    // The journal may be lost: an emptyDir, not a PersistentVolume.
    assert!(get(pod, "volumes.0.emptyDir").is_mapping());
}
