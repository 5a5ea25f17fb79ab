# `nix run .#dev`: the full local stack under process-compose, every tool from nixpkgs and every
# cairn binary from this flake (nothing is compiled at run time). Owns the stack's ports, data
# directories and the environment each service gets; must never hold a real secret (JWT_SECRET
# is generated per run unless the caller exports one).
#
# Stack: PostgreSQL (services-flake), Garage (the S3 server the deployment's servers run; a
# process running `garage server` on a generated config, and a one-shot setup process for the
# layout, the key and the bucket: services-flake has no Garage module), inference on a tiny
# random model (or MODEL_DIR), api, gateway, nginx in front serving the web app (web/) at / and
# the api under /api/.
# Data lives in ./data under the directory `nix run .#dev` is started from.
{
  pkgs,
  packages,
  processCompose,
  servicesModule,
}:
let
  inherit (pkgs) lib;
  inherit (packages.binaries)
    gateway
    api
    inference
    ;

  ports = {
    nginx = 8088;
    gateway = 8080;
    api = 8000;
    inference = 8001;
    postgres = 5432;
    s3 = 3900; # Garage's S3 API
    garageRpc = 3901;
    garageAdmin = 3903;
  };
  local = port: "127.0.0.1:${toString port}";
  url = port: "http://${local port}";

  bucket = "cairn";
  servedModel = "tiny";

  # Garage 2.x (the major version the servers run). Its S3 region must be the api's S3_REGION
  # (SigV4 signs it). Paths are relative to the directory the stack runs in; the RPC secret comes
  # from GARAGE_RPC_SECRET (generated per run below), never from this file in the store.
  garage = pkgs.garage_2;
  s3Region = "us-east-1";
  garageConfig = pkgs.writeText "cairn-dev-garage.toml" ''
    metadata_dir = "data/garage/meta"
    data_dir = "data/garage/data"
    db_engine = "sqlite"
    replication_factor = 1
    rpc_bind_addr = "${local ports.garageRpc}"
    rpc_public_addr = "${local ports.garageRpc}"

    [s3_api]
    s3_region = "${s3Region}"
    api_bind_addr = "${local ports.s3}"

    [admin]
    api_bind_addr = "${local ports.garageAdmin}"
  '';
  garageCli = "${lib.getExe garage} -c ${garageConfig}";
  # The dev stack's S3 credentials: a fixed key for a server bound to loopback, imported by the
  # setup process (Garage key IDs are GK + 24 hex digits, secrets 64 hex digits).
  s3Key = {
    id = "GK${lib.fixedWidthString 24 "0" "cafe"}";
    secret = lib.fixedWidthString 64 "0" "cafe";
  };

  httpProbe = port: path: {
    http_get = {
      host = "127.0.0.1";
      inherit port path;
    };
    initial_delay_seconds = 1;
    period_seconds = 2;
    failure_threshold = 30;
  };
  healthy = names: lib.genAttrs names (_: { condition = "process_healthy"; });

  nginxConfig = pkgs.writeText "cairn-dev-nginx.conf" ''
    pid data/nginx/nginx.pid;
    error_log stderr;
    daemon off;
    events {}
    http {
      access_log off;
      client_body_temp_path data/nginx/body;
      proxy_temp_path data/nginx/proxy;
      fastcgi_temp_path data/nginx/fastcgi;
      scgi_temp_path data/nginx/scgi;
      uwsgi_temp_path data/nginx/uwsgi;
      map $http_upgrade $connection_upgrade {
        default upgrade;
        ""      "";
      }
      upstream cairn_gateway {
        server ${local ports.gateway};
        keepalive 16;
      }
      server {
        listen ${local ports.nginx};
        # The web app, from the flake's source; the same security headers (and so the same
        # Content-Security-Policy) as the rendered configs. Its own small types map: modules
        # must be served as JavaScript.
        root ${../web};
        include ${../nginx/security-headers.conf};
        types {
          text/html html;
          text/css css;
          text/javascript js;
        }
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        # SSE (chat streaming) must reach the client event by event.
        proxy_buffering off;
        proxy_read_timeout 1h;
        # The site's body limit (site.body_limit_mib), for uploads.
        client_max_body_size 25m;
        location / {
          include ${../nginx/security-headers.conf};
          add_header Cache-Control "no-cache" always;
          try_files $uri $uri/ /index.html;
        }
        location /api/ {
          proxy_pass http://cairn_gateway;
        }
        location /v1/ {
          proxy_pass http://cairn_gateway;
        }
      }
    }
  '';

  stack = {
    # services-flake turns process-compose's own HTTP server off, so it does not take port 8080.
    cli = {
      # One secret shared by the api (issues JWTs) and the gateway (verifies them); generated
      # per run, never printed.
      preHook = ''
        if [ -z "''${JWT_SECRET:-}" ]; then
          JWT_SECRET="$(${pkgs.openssl}/bin/openssl rand -hex 32)"
          export JWT_SECRET
        fi
        # Garage's nodes authenticate each other (and the CLI) with it; one node, one run.
        if [ -z "''${GARAGE_RPC_SECRET:-}" ]; then
          GARAGE_RPC_SECRET="$(${pkgs.openssl}/bin/openssl rand -hex 32)"
          export GARAGE_RPC_SECRET
        fi
      '';
    };

    services.postgres.postgres = {
      enable = true;
      port = ports.postgres;
      listen_addresses = "127.0.0.1";
      superuser = "cairn";
      initialDatabases = [ { name = "cairn"; } ];
    };

    settings.processes = {
      garage = {
        command = pkgs.writeShellApplication {
          name = "cairn-dev-garage";
          runtimeInputs = [ garage ];
          text = ''
            mkdir -p data/garage/meta data/garage/data
            exec ${garageCli} server
          '';
        };
        # `garage status` answers once the node runs (with or without a layout).
        readiness_probe = {
          exec.command = "${garageCli} status";
          initial_delay_seconds = 1;
          period_seconds = 2;
          failure_threshold = 30;
        };
      };

      # One shot, idempotent (the data directory outlives a run): the node's role in the layout,
      # the api's key and its bucket.
      garage-setup = {
        command = pkgs.writeShellApplication {
          name = "cairn-dev-garage-setup";
          runtimeInputs = [
            garage
            pkgs.coreutils
          ];
          text = ''
            garage() { ${garageCli} "$@"; }
            if [ ! -e data/garage/layout-applied ]; then
              node="$(garage node id -q | cut -d@ -f1)"
              garage layout assign -z dev -c 1G "$node"
              garage layout apply --version 1
              touch data/garage/layout-applied
            fi
            garage key info cairn-dev >/dev/null 2>&1 \
              || garage key import --yes -n cairn-dev ${s3Key.id} ${s3Key.secret}
            garage bucket info ${bucket} >/dev/null 2>&1 || garage bucket create ${bucket}
            garage bucket allow --read --write --owner ${bucket} --key cairn-dev
          '';
        };
        depends_on = healthy [ "garage" ];
      };

      inference = {
        command = pkgs.writeShellApplication {
          name = "cairn-dev-inference";
          runtimeInputs = [ inference ];
          text = ''
            # A real model when MODEL_DIR names one, else a tiny random model made once.
            if [ -z "''${MODEL_DIR:-}" ]; then
              MODEL_DIR="$PWD/data/tiny-model"
              [ -e "$MODEL_DIR/config.json" ] || inference tiny-model "$MODEL_DIR"
            fi
            export MODEL_DIR
            exec inference serve
          '';
        };
        environment = {
          INFERENCE_LISTEN = local ports.inference;
          SERVED_MODEL_NAME = servedModel;
          DEVICE = "cpu";
        };
        readiness_probe = httpProbe ports.inference "/health";
      };

      api = {
        command = "${lib.getExe api} serve";
        environment = {
          API_LISTEN = local ports.api;
          API_DEV_MODE = "1";
          DATABASE_URL = "postgres://cairn@${local ports.postgres}/cairn";
          LLM_BASE_URL = "${url ports.inference}/v1";
          LLM_MODEL = servedModel;
          STORAGE_BACKEND = "s3";
          S3_ENDPOINT = url ports.s3;
          S3_BUCKET = bucket;
          S3_REGION = s3Region;
          AWS_ACCESS_KEY_ID = s3Key.id;
          AWS_SECRET_ACCESS_KEY = s3Key.secret;
        };
        depends_on =
          healthy [
            "postgres"
            "inference"
          ]
          // {
            garage-setup.condition = "process_completed_successfully";
          };
        readiness_probe = httpProbe ports.api "/api/health/ready";
      };

      gateway = {
        command = "${lib.getExe gateway} serve";
        environment = {
          GATEWAY_LISTEN = local ports.gateway;
          GATEWAY_API_UPSTREAMS = url ports.api;
          GATEWAY_INFERENCE_UPSTREAMS = url ports.inference;
        };
        depends_on = healthy [
          "api"
          "inference"
        ];
        readiness_probe = httpProbe ports.gateway "/api/health";
      };

      nginx = {
        command = pkgs.writeShellApplication {
          name = "cairn-dev-nginx";
          runtimeInputs = [ pkgs.nginx ];
          text = ''
            mkdir -p data/nginx
            exec nginx -p "$PWD" -c ${nginxConfig} -e stderr
          '';
        };
        depends_on = healthy [ "gateway" ];
        readiness_probe = httpProbe ports.nginx "/api/health";
      };
    };
  };
in
processCompose.makeProcessCompose {
  name = "cairn-dev";
  modules = [
    servicesModule
    stack
  ];
}
