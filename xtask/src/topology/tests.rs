//! Each bad topology gives one clear error naming the file, the line and the field. The bad
//! files are the committed default topology with one edit, so the tests follow the format.

use expect_test::{Expect, expect};

use super::parse;

const DEFAULT: &str = include_str!("../../../deploy/topology.toml");

/// The default topology with `from` (which must occur exactly once) replaced by `to`.
fn edited(from: &str, to: &str) -> String {
    assert_eq!(DEFAULT.matches(from).count(), 1, "{from:?} must occur once");
    DEFAULT.replacen(from, to, 1)
}

fn assert_error(source: &str, expected: Expect) {
    let err = parse("deploy/topology.toml", source).expect_err("the topology must be rejected");
    expected.assert_eq(&err.to_string());
}

#[test]
fn the_default_topology_is_valid() {
    let topology = parse("deploy/topology.toml", DEFAULT).expect("default topology");
    assert_eq!(topology.servers.len(), 2);
    assert!(topology.services["inference"].gpu.is_some());
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    assert_error(
        &edited("memory = \"64m\"\n", "memory = \"64m\"\ngpus = 1\n"),
        expect![
            "deploy/topology.toml line 149: unknown field `gpus`, expected one of `server`, `image`, `command`, `port`, `publish`, `user`, `memory`, `replicas`, `health`, `depends_on`, `networks`, `env`, `secrets`, `links`, `volumes`, `tmpfs`, `gpu`, `body_limit_env`"
        ],
    );
}

#[test]
fn a_syntax_error_is_located() {
    assert_error(
        &edited("memory = \"64m\"\n", "memory = 64m\n"),
        expect![
            "deploy/topology.toml line 148: string values must be quoted, expected literal string"
        ],
    );
}

#[test]
fn a_secret_that_is_not_declared_is_missing() {
    assert_error(
        &edited(
            "secrets = [\"GARAGE_RPC_SECRET\", \"GARAGE_ADMIN_TOKEN\",",
            "secrets = [\"GARAGE_RPC_SECRET\", \"GARAGE_ADMIN_TOKN\",",
        ),
        expect![[
            r#"deploy/topology.toml line 219: services.garage.secrets: secret "GARAGE_ADMIN_TOKN" is not declared under [secrets]"#
        ]],
    );
}

#[test]
fn an_env_value_needs_the_secret_it_refers_to() {
    assert_error(
        &edited(
            "GATEWAY_LISTEN = \"0.0.0.0:8080\"",
            "GATEWAY_LISTEN = \"0.0.0.0:8080\"\nDATABASE_URL = \"postgres://u:${POSTGRES_PASSWORD}@db/x\"",
        ),
        expect![[
            r#"deploy/topology.toml line 159: services.gateway.env.DATABASE_URL: refers to "POSTGRES_PASSWORD", which is neither a secret the service lists in `secrets` nor a declared setting"#
        ]],
    );
}

#[test]
fn two_services_publishing_one_host_port_clash() {
    assert_error(
        &edited(
            "  { host = 443, container = 8443 },",
            "  { host = 443, container = 8443 },\n  { host = 80, container = 8081 },",
        ),
        expect![[
            r#"deploy/topology.toml line 135: services.nginx.publish: host port 80 on server "a" is already published by service "nginx""#
        ]],
    );
}

#[test]
fn a_gpu_on_a_server_without_one_is_refused() {
    assert_error(
        &edited(
            "[services.inference]\nserver = \"b\"",
            "[services.inference]\nserver = \"a\"",
        ),
        expect![[
            r#"deploy/topology.toml line 248: services.inference.gpu: server "a" has no GPU (gpus = 0)"#
        ]],
    );
}

#[test]
fn a_depends_on_cycle_is_shown_as_a_path() {
    assert_error(
        &edited(
            "networks = [\"data\"]\ntmpfs = [\"/tmp\"]\nsecrets = [\"POSTGRES_PASSWORD\"]",
            "networks = [\"data\"]\ndepends_on = [\"api\"]\ntmpfs = [\"/tmp\"]\nsecrets = [\"POSTGRES_PASSWORD\"]",
        ),
        expect![
            "deploy/topology.toml line 202: services.postgres.depends_on: cycle api -> postgres -> api"
        ],
    );
}

#[test]
fn an_image_no_build_produces_is_refused() {
    assert_error(
        &edited("build = \"api\"", "build = \"api-debug\""),
        expect![[
            r#"deploy/topology.toml line 117: images.api.build: no cairn build produces an image named "api-debug" (built: gateway, api, inference, inference-cuda, postgres, nginx, garage)"#
        ]],
    );
}

#[test]
fn a_service_image_must_be_declared() {
    assert_error(
        &edited("image = \"gateway\"", "image = \"gateway-next\""),
        expect![[
            r#"deploy/topology.toml line 145: services.gateway.image: no image "gateway-next" is declared under [images] (declared: api, garage, gateway, inference, nginx, postgres)"#
        ]],
    );
}

#[test]
fn a_third_party_image_must_be_pinned_by_digest() {
    assert_error(
        &edited(
            "[images.garage]\nbuild = \"garage\"",
            "[images.garage]\nreference = \"docker.io/dxflrs/garage:v2.1.0\"",
        ),
        expect![[
            r#"deploy/topology.toml line 125: images.garage.reference: "docker.io/dxflrs/garage:v2.1.0" must be pinned by tag and digest (name:tag@sha256:<64 hex>; `cargo xtask pin` writes it)"#
        ]],
    );
}

#[test]
fn a_placeholder_digest_is_refused_with_its_line() {
    let placeholder = "sha256:cac842e54bc1b123a7e8a8b16222c47a033eb1b8d43ee39b9c9f6963d9f2b8a7";
    let source = edited(
        "[images.garage]\nbuild = \"garage\"",
        &format!("[images.garage]\nreference = \"docker.io/dxflrs/garage:v1.1.0@{placeholder}\""),
    );
    let err = parse("deploy/topology.toml", &source).expect_err("placeholder refused");
    assert_eq!(err.line, Some(125), "{err}");
    let message = err.to_string();
    assert!(message.contains("images.garage.reference"), "{message}");
    assert!(message.contains("placeholder digest"), "{message}");
}

#[test]
fn placeholder_digests_are_recognised() {
    use super::validate::placeholder;
    let garage = "docker.io/dxflrs/garage:v1.1.0@sha256:cac842e54bc1b123a7e8a8b16222c47a033eb1b8d43ee39b9c9f6963d9f2b8a7";
    assert_eq!(
        placeholder("garage", garage).as_deref(),
        Some("the sha256 of \"cairn placeholder garage\"")
    );
    assert!(
        placeholder("s3", garage).is_some(),
        "by the repository name too"
    );
    let zeros = format!("web:1@sha256:{}", "0".repeat(64));
    assert!(placeholder("web", &zeros).is_some());
    let real = "docker.io/library/postgres:16-alpine@sha256:57c72fd2a128e416c7fcc499958864df5301e940bca0a56f58fddf30ffc07777";
    assert_eq!(placeholder("postgres", real), None);
}

#[test]
fn root_is_refused() {
    assert_error(
        &edited(
            "user = \"65532:65532\"\nmemory = \"512m\"",
            "user = \"0:0\"\nmemory = \"512m\"",
        ),
        expect![[
            r#"deploy/topology.toml line 199: services.postgres.user: services must run as a non-root user, not "0:0""#
        ]],
    );
}

#[test]
fn a_link_across_servers_needs_a_published_port() {
    assert_error(
        &edited(
            "publish = [{ host = 8001, container = 8001, bind = \"private\" }]\n",
            "",
        ),
        expect![[
            r#"deploy/topology.toml line 155: services.gateway.links.GATEWAY_INFERENCE_UPSTREAMS: service "inference" runs on server "b" but publishes no host port for its port, so server "a" cannot reach it"#
        ]],
    );
}

#[test]
fn a_private_address_is_an_ip_or_a_setting() {
    assert_error(
        &edited(
            "private_address = \"${SERVER_B_ADDRESS}\"",
            "private_address = \"server-b.internal\"",
        ),
        expect![[
            r#"deploy/topology.toml line 35: servers.b.private_address: "server-b.internal" is neither an IP address nor ${SETTING}"#
        ]],
    );
    assert_error(
        &edited(
            "private_address = \"${SERVER_B_ADDRESS}\"",
            "private_address = \"${SERVER_B_ADDR}\"",
        ),
        expect![
            "deploy/topology.toml line 35: servers.b.private_address: refers to ${SERVER_B_ADDR}, which is not declared under [settings] (settings: ACME_WEBROOT, CERTIFICATES_DIR, MODEL_HOST_DIR, SERVER_A_ADDRESS, SERVER_B_ADDRESS)"
        ],
    );
}

#[test]
fn a_host_folder_may_name_only_declared_settings() {
    let err = parse(
        "deploy/topology.toml",
        &edited(
            "certificates_dir = \"${CERTIFICATES_DIR}\"",
            "certificates_dir = \"${CERT_DIR}\"",
        ),
    )
    .expect_err("an undeclared setting");
    assert!(
        err.to_string()
            .contains("site.certificates_dir: refers to ${CERT_DIR}, which is not declared"),
        "{err}"
    );
}

#[test]
fn a_setting_default_must_survive_a_env_line() {
    let err = parse(
        "deploy/topology.toml",
        &edited(
            "default = \"/srv/cairn/certs\"",
            "default = \"/srv/my certs\"",
        ),
    )
    .expect_err("a space");
    assert!(
        err.to_string()
            .contains("settings.CERTIFICATES_DIR.default"),
        "{err}"
    );
}
