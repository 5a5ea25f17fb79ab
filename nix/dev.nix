# `nix run .#dev`: the full local stack under process-compose, every tool from nixpkgs and every
# cairn binary from this flake (nothing is compiled at run time). Owns the stack's ports, data
# directories and the environment each service gets; must never hold a real secret (JWT_SECRET
# is generated per run unless the caller exports one).
#
# Stack: PostgreSQL and SeaweedFS's S3 gateway (services-flake), a bucket for the api,
# inference on a tiny random model (or MODEL_DIR), api, gateway, nginx in front serving the web
# app (web/) at / and the api under /api/.
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
    s3 = 8333;
    seaweedMaster = 9333;
    seaweedVolume = 8081; # its default, 8080, is the gateway's
    seaweedFiler = 8888;
  };
  local = port: "127.0.0.1:${toString port}";
  url = port: "http://${local port}";

  bucket = "cairn";
  servedModel = "tiny";

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
      '';
    };

    services.postgres.postgres = {
      enable = true;
      port = ports.postgres;
      listen_addresses = "127.0.0.1";
      superuser = "cairn";
      initialDatabases = [ { name = "cairn"; } ];
    };

    services.seaweedfs.s3 = {
      enable = true;
      master.port = ports.seaweedMaster;
      volume.port = ports.seaweedVolume;
      filer = {
        enable = true;
        port = ports.seaweedFiler;
      };
      s3 = {
        enable = true;
        port = ports.s3;
      };
    };

    settings.processes = {
      s3-bucket = {
        command = pkgs.writeShellApplication {
          name = "cairn-dev-s3-bucket";
          runtimeInputs = [
            pkgs.seaweedfs
            pkgs.gnugrep
          ];
          text = ''
            weed_shell() {
              echo "$1" | weed shell -master=${local ports.seaweedMaster} -filer=${local ports.seaweedFiler}
            }
            # Idempotent: the data directory outlives one run. (Output is captured before grep
            # so that grep -q closing the pipe early cannot fail the pipeline under pipefail.)
            buckets="$(weed_shell "s3.bucket.list")"
            if ! grep -qw ${bucket} <<<"$buckets"; then
              weed_shell "s3.bucket.create -name ${bucket}"
              buckets="$(weed_shell "s3.bucket.list")"
              grep -qw ${bucket} <<<"$buckets"
            fi
          '';
        };
        depends_on = healthy [ "s3" ];
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
          S3_REGION = "us-east-1";
          # SeaweedFS runs without identities in the dev stack: any key is accepted.
          AWS_ACCESS_KEY_ID = "cairn-dev";
          AWS_SECRET_ACCESS_KEY = "cairn-dev";
        };
        depends_on =
          healthy [
            "postgres"
            "inference"
          ]
          // {
            s3-bucket.condition = "process_completed_successfully";
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
