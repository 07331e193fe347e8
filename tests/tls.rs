//! TLS through the real daemon, with a CA made at test time (rcgen): a
//! tonic client that trusts the CA works and a plaintext one does not;
//! mutual TLS refuses a client without a certificate; grpcurl over TLS with
//! an API key; the CLI client's --ca and --api-key.

use std::{path::Path, process::Command, time::Duration};

use lookalike::api::proto::{lookalike_client::LookalikeClient, StatsRequest};
use lookalike::lab::child::ChildDaemon;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const KEY: &str = "tls-test-key-89";

/// A CA, a server certificate for localhost / 127.0.0.1 and a client
/// certificate, written as PEM files under `dir`.
struct Pki {
    ca: String,
    client_cert: String,
    client_key: String,
}

fn make_pki(dir: &Path) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &ca)
            .expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
    let (client_cert, client_key) = leaf(vec!["client".into()]);
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("server.pem", server_cert),
        ("server.key", server_key),
        ("client.pem", client_cert.clone()),
        ("client.key", client_key.clone()),
    ] {
        std::fs::write(dir.join(name), pem).expect("write pem");
    }
    Pki {
        ca: ca.pem(),
        client_cert,
        client_key,
    }
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

/// Calls Stats at `url` (over TLS with `tls`); any failure, connecting or
/// calling, is an error.
async fn stats_over(
    url: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut endpoint = Channel::from_shared(url.to_string())?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    LookalikeClient::new(endpoint.connect().await?)
        .stats(StatsRequest {})
        .await?;
    Ok(())
}

async fn start(dir: &Path, extra: &[&str], tls: ClientTlsConfig) -> ChildDaemon {
    let binary = Path::new(env!("CARGO_BIN_EXE_lookalike"));
    ChildDaemon::start_with_tls(
        binary,
        &dir.join("data"),
        extra,
        Duration::from_secs(120),
        Some(tls),
    )
    .await
    .expect("start a TLS daemon")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_key_for_tonic_grpcurl_and_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let (cert, key) = (
        path(dir.path(), "server.pem"),
        path(dir.path(), "server.key"),
    );
    let trust = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca));
    let daemon = start(
        dir.path(),
        &["--tls-cert", &cert, "--tls-key", &key, "--api-key", KEY],
        trust.clone(),
    )
    .await;

    // tonic over TLS, trusting the test CA, with the key.
    let channel = daemon.channel().await.expect("TLS channel");
    let mut client = LookalikeClient::with_interceptor(channel, |mut req: tonic::Request<()>| {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {KEY}").parse().expect("value"),
        );
        Ok(req)
    });
    let stats = client.stats(StatsRequest {}).await.expect("stats over TLS");
    assert_eq!(stats.into_inner().count, 0);

    // Plaintext to a TLS port fails, and so does TLS without trusting the CA.
    let plain = format!("http://{}", daemon.addr());
    assert!(
        stats_over(&plain, None).await.is_err(),
        "plaintext got through to a TLS port"
    );
    let untrusted = Channel::from_shared(daemon.url())
        .expect("url")
        .tls_config(ClientTlsConfig::new())
        .expect("tls")
        .connect()
        .await;
    assert!(
        untrusted.is_err(),
        "a certificate from an unknown CA was accepted"
    );

    // grpcurl over TLS with the key (reflection follows the key).
    let grpcurl = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let addr = daemon.addr().to_string();
    let ca = path(dir.path(), "ca.pem");
    let out = Command::new(&grpcurl)
        .args([
            "-cacert",
            &ca,
            "-H",
            &format!("authorization: Bearer {KEY}"),
        ])
        .args([addr.as_str(), "lookalike.v1.Lookalike/Stats"])
        .output()
        .expect("grpcurl");
    assert!(out.status.success(), "grpcurl over TLS: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("model"),
        "{out:?}"
    );

    // The CLI client: --ca (an http:// address is taken as https://) and
    // --api-key.
    let out = Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .env_remove("LOOKALIKE_API_KEY")
        .args(["stats", "--server", &plain, "--ca", &ca, "--api-key", KEY])
        .output()
        .expect("lookalike stats");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("images          0"));
    assert!(daemon.stop().expect("stop"), "clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let (cert, key, ca) = (
        path(dir.path(), "server.pem"),
        path(dir.path(), "server.key"),
        path(dir.path(), "ca.pem"),
    );
    let with_identity = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    let daemon = start(
        dir.path(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
        with_identity,
    )
    .await;
    let mut client = LookalikeClient::new(daemon.channel().await.expect("mTLS channel"));
    client
        .stats(StatsRequest {})
        .await
        .expect("a client with a certificate");

    let trust_only = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca));
    assert!(
        stats_over(&daemon.url(), Some(trust_only)).await.is_err(),
        "a client without a certificate got through"
    );
    assert!(daemon.stop().expect("stop"), "clean exit");
}
