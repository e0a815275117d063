//! Listing the node's pods from the API server, with the `kube` crate (see the workspace
//! Cargo.toml for why this client and what it costs to build).

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, Config, api::ListParams, config::InClusterError};

pub struct Pods {
    api: Api<Pod>,
    base: String,
}

impl Pods {
    /// The API server at `url`, or the in-cluster one (`KUBERNETES_SERVICE_HOST`/`_PORT`).
    /// In a pod, the service account's token and CA are used either way; the token is
    /// re-read as the kubelet rotates it. Must run inside the tokio runtime.
    pub fn new(url: Option<&str>) -> Result<Pods> {
        const CREDENTIALS: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
        let config = match url {
            // Never the token in the clear: plain http is for tests against a local fake.
            Some(url) if url.starts_with("http://") => Config::new(parse(url)?),
            Some(url) => match Config::incluster() {
                Ok(mut c) => {
                    c.cluster_url = parse(url)?;
                    c
                }
                Err(InClusterError::ReadEnvironmentVariable(_)) => Config::new(parse(url)?),
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("reading the service account's credentials in {CREDENTIALS}")
                    });
                }
            },
            None => Config::incluster().with_context(|| {
                format!(
                    "reading the in-cluster configuration (KUBERNETES_SERVICE_HOST/_PORT and \
                     the service account's credentials in {CREDENTIALS}); outside a pod, give \
                     --kubernetes-api"
                )
            })?,
        };
        let base = config.cluster_url.to_string();
        let mut config = config;
        // A list that hangs must not freeze the map: the next pass tries again.
        config.read_timeout = Some(Duration::from_secs(10));
        let client = Client::try_from(config).context("building the Kubernetes API client")?;
        Ok(Pods {
            api: Api::all(client),
            base,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The pods bound to `node`. `resourceVersion=0` (match any) lets the API server answer
    /// from its watch cache instead of etcd, which matters when every node asks each second.
    pub async fn on(&self, node: &str) -> Result<Vec<Pod>> {
        let params = ListParams::default()
            .fields(&format!("spec.nodeName={node}"))
            .match_any();
        let list = self.api.list(&params).await.with_context(|| {
            format!(
                "listing the pods of node {node} from {} (a 403 means the service account \
                 may not list pods: see deploy/kubernetes/rbac.yaml)",
                self.base
            )
        })?;
        Ok(list.items)
    }
}

fn parse(url: &str) -> Result<http::Uri> {
    url.parse()
        .with_context(|| format!("--kubernetes-api {url:?} is not a URL"))
}
