//! The deployment files parse and agree with the runtime: the grace period
//! leaves room for SHUTDOWN_TIMEOUT, the probes and the preStop hook hit the
//! health endpoints, and each pod gets its own volume. (No cluster or docker
//! engine is available here: this checks the files, not a live rollout.)

use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn docs() -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("deploy/kubernetes.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("valid YAML document"))
        .collect()
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

fn command(v: &Value) -> String {
    v.as_sequence()
        .expect("a command list")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn statefulset_probes_and_grace_period() {
    let docs = docs();
    let sts = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("a StatefulSet");
    assert_eq!(sts["apiVersion"], "apps/v1");
    let svc = docs
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("a headless Service");
    assert_eq!(get(svc, "spec.clusterIP"), "None");
    assert!(
        get(svc, "spec.ports").is_null(),
        "the health port must not be exposed by a Service"
    );
    assert_eq!(get(sts, "spec.serviceName"), get(svc, "metadata.name"));

    let pod = get(sts, "spec.template.spec");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("grace period set");
    let c = &pod["containers"][0];
    let timeout: f64 = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SHUTDOWN_TIMEOUT")
        .and_then(|e| e["value"].as_str())
        .expect("SHUTDOWN_TIMEOUT in env")
        .parse()
        .unwrap();
    // The same parser the runtime uses accepts it.
    let parsed = agentwal::runtime::shutdown::parse_timeout(&timeout.to_string()).unwrap();
    assert!(
        grace >= parsed.as_secs_f64() + 5.0,
        "grace period {grace}s must exceed SHUTDOWN_TIMEOUT {timeout}s with margin"
    );

    let pre_stop = command(get(c, "lifecycle.preStop.exec.command"));
    assert!(
        pre_stop.contains("-X POST") && pre_stop.ends_with("/shutdown"),
        "{pre_stop}"
    );
    assert!(
        pre_stop.contains("127.0.0.1"),
        "preStop must use the loopback address: {pre_stop}"
    );
    let live = command(get(c, "livenessProbe.exec.command"));
    let ready = command(get(c, "readinessProbe.exec.command"));
    assert!(live.ends_with("/health"), "{live}");
    assert!(ready.ends_with("/ready"), "{ready}");

    // The agent gets the health address the probes use, and a journal on the volume.
    let args = command(&c["args"]);
    assert!(args.contains("--health 127.0.0.1:8080"), "{args}");
    assert!(pre_stop.contains("127.0.0.1:8080") && live.contains("127.0.0.1:8080"));
    let mount = &c["volumeMounts"][0];
    let claim = get(sts, "spec.volumeClaimTemplates.0");
    assert_eq!(
        mount["name"], claim["metadata"]["name"],
        "one volume per pod, from the claim template"
    );
    assert!(
        args.contains(&format!(
            "--journal {}/",
            mount["mountPath"].as_str().unwrap()
        )),
        "{args}"
    );
    assert_eq!(get(claim, "spec.accessModes.0"), "ReadWriteOnce");
}

#[test]
fn dockerfile_runs_the_agent_as_pid_1_with_a_budget_below_docker_stop() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        text.contains("ENTRYPOINT [\"/usr/local/bin/batch_agent\"]"),
        "exec-form entrypoint"
    );
    assert!(text.contains("STOPSIGNAL SIGTERM"));
    let budget: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ENV SHUTDOWN_TIMEOUT="))
        .expect("ENV SHUTDOWN_TIMEOUT")
        .trim()
        .parse()
        .unwrap();
    assert!(budget < 10, "docker stop sends SIGKILL after 10 s");
    assert!(text.contains("--example batch_agent"));
    assert!(text.contains("USER 10001"));
}
