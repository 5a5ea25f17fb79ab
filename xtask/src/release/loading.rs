//! The bundle's `README.md` for a release without a registry: which docker-archive each server
//! loads before `docker compose up`, and why. Pure text from the facts the release knows; this
//! module never runs anything.
//!
//! The compose files of such a bundle pin cairn's images by the content tag of their
//! docker-archive (`cairn/NAME:manifest-<hex of the manifest digest>`), which a server has only
//! after `docker load`: without it compose tries to pull the tag from Docker Hub and fails.

use std::collections::BTreeMap;

use crate::topology::{Image, Topology};

/// Built image names per server (`a` -> `["gateway"]`), from the topology's services.
pub fn images_per_server(topology: &Topology) -> BTreeMap<String, Vec<String>> {
    let mut per_server: BTreeMap<String, Vec<String>> = topology
        .servers
        .keys()
        .map(|server| (server.clone(), Vec::new()))
        .collect();
    for service in topology.services.values() {
        if let Some(Image::Build(name)) = topology.images.get(service.image.get_ref()) {
            let images = per_server
                .entry(service.server.get_ref().clone())
                .or_default();
            if !images.contains(name.get_ref()) {
                images.push(name.get_ref().clone());
            }
        }
    }
    for images in per_server.values_mut() {
        images.sort();
    }
    per_server
}

/// The README: `tags` maps each built image to its archive's content tag, `per_server` names
/// what each server runs.
pub fn render_readme(
    tags: &BTreeMap<String, String>,
    per_server: &BTreeMap<String, Vec<String>>,
) -> String {
    let mut text = String::from(
        "# cairn release bundle\n\
         \n\
         Written by `cargo xtask release` without a registry: cairn's images travel in this bundle\n\
         as docker-archives (`images/`) and as one OCI layout (`oci/`). The compose files pin each\n\
         cairn image by the tag its archive gives it, `cairn/NAME:manifest-<manifest digest>`\n\
         (the `digest` of `release.json`): a server has it only after `docker load`, with Docker's\n\
         classic or containerd image store alike. Without the load, compose tries to pull the tag\n\
         from Docker Hub and fails. `topology.toml` is the topology the bundle was rendered from.\n\
         \n\
         | image | archive | image reference (what compose pins) |\n\
         | --- | --- | --- |\n",
    );
    for (name, tag) in tags {
        text.push_str(&format!("| {name} | images/{name}.tar | `{tag}` |\n"));
    }
    for (server, images) in per_server {
        let archives: Vec<String> = images.iter().map(|i| format!("`images/{i}.tar`")).collect();
        let copied = [vec![format!("`server-{server}/`")], archives].concat();
        text.push_str(&format!(
            "\n## server-{server}\n\nCopy {} to the server, then:\n\n```sh\n",
            copied.join(", ")
        ));
        for image in images {
            text.push_str(&format!("docker load -i images/{image}.tar\n"));
        }
        text.push_str(&format!(
            "cd server-{server}\n\
             cp .env.example .env    # then fill in every value\n\
             docker compose up -d    # or docker-compose 1.29\n```\n"
        ));
    }
    text.push_str(
        "\n`docker image ls cairn/NAME` lists what a load tagged: that tag and `cairn/NAME:latest`.\n\
         Third-party images (nginx, PostgreSQL, object storage) are pulled as the topology pins\n\
         them. To run from a registry instead, release with `--registry`, or push the layout:\n\
         `skopeo copy oci:oci:NAME docker://HOST/cairn/NAME:TAG`.\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn the_readme_names_each_servers_archives_and_tags() {
        let tags: BTreeMap<String, String> = [("api", "1"), ("gateway", "2"), ("inference", "3")]
            .into_iter()
            .map(|(name, digit)| {
                let tag = format!("cairn/{name}:manifest-{}", digit.repeat(64));
                (name.to_owned(), tag)
            })
            .collect();
        let per_server: BTreeMap<String, Vec<String>> = [
            ("a", vec!["api".to_owned(), "gateway".to_owned()]),
            ("b", vec!["inference".to_owned()]),
        ]
        .into_iter()
        .map(|(server, images)| (server.to_owned(), images))
        .collect();
        expect![[r#"
            # cairn release bundle

            Written by `cargo xtask release` without a registry: cairn's images travel in this bundle
            as docker-archives (`images/`) and as one OCI layout (`oci/`). The compose files pin each
            cairn image by the tag its archive gives it, `cairn/NAME:manifest-<manifest digest>`
            (the `digest` of `release.json`): a server has it only after `docker load`, with Docker's
            classic or containerd image store alike. Without the load, compose tries to pull the tag
            from Docker Hub and fails. `topology.toml` is the topology the bundle was rendered from.

            | image | archive | image reference (what compose pins) |
            | --- | --- | --- |
            | api | images/api.tar | `cairn/api:manifest-1111111111111111111111111111111111111111111111111111111111111111` |
            | gateway | images/gateway.tar | `cairn/gateway:manifest-2222222222222222222222222222222222222222222222222222222222222222` |
            | inference | images/inference.tar | `cairn/inference:manifest-3333333333333333333333333333333333333333333333333333333333333333` |

            ## server-a

            Copy `server-a/`, `images/api.tar`, `images/gateway.tar` to the server, then:

            ```sh
            docker load -i images/api.tar
            docker load -i images/gateway.tar
            cd server-a
            cp .env.example .env    # then fill in every value
            docker compose up -d    # or docker-compose 1.29
            ```

            ## server-b

            Copy `server-b/`, `images/inference.tar` to the server, then:

            ```sh
            docker load -i images/inference.tar
            cd server-b
            cp .env.example .env    # then fill in every value
            docker compose up -d    # or docker-compose 1.29
            ```

            `docker image ls cairn/NAME` lists what a load tagged: that tag and `cairn/NAME:latest`.
            Third-party images (nginx, PostgreSQL, object storage) are pulled as the topology pins
            them. To run from a registry instead, release with `--registry`, or push the layout:
            `skopeo copy oci:oci:NAME docker://HOST/cairn/NAME:TAG`.
        "#]]
        .assert_eq(&render_readme(&tags, &per_server));
    }
}
