//! TLS and mutual TLS, end to end with the client crate: the right CA connects;
//! no CA, no client certificate (under mTLS) and plaintext are refused cleanly,
//! and the server keeps serving.

mod common;

use std::time::Duration;

use common::{TestServer, test_tls_file};
use jobq_client::{Error, JobQueueClient};
use jobq_server::config::TlsFiles;
use uuid::Uuid;

fn tls(mutual: bool) -> TlsFiles {
    TlsFiles {
        certificate: test_tls_file("server.pem"),
        key: test_tls_file("server.key"),
        client_ca: mutual.then(|| test_tls_file("client-ca.pem")),
    }
}

/// A call's outcome within 10 s (a refused handshake must not hang).
async fn quota(client: JobQueueClient) -> Result<(), Error> {
    tokio::time::timeout(Duration::from_secs(10), client.check_quota(Uuid::new_v4()))
        .await
        .expect("an answer, not a hang")
        .map(drop)
}

async fn connect(builder: jobq_client::ClientBuilder) -> Result<JobQueueClient, Error> {
    tokio::time::timeout(Duration::from_secs(10), builder.build())
        .await
        .expect("connecting ends, one way or the other")
}

#[tokio::test]
async fn tls_admits_clients_that_trust_its_ca_and_refuses_plaintext() {
    let server = TestServer::start_configured(|config| config.tls = Some(tls(false))).await;
    let https = format!("https://127.0.0.1:{}", server.addr.port());
    let trusted = JobQueueClient::builder(&https).ca_certificate(test_tls_file("ca.pem"));

    let client = connect(trusted.clone())
        .await
        .expect("the test CA is trusted");
    quota(client).await.expect("a call over TLS");

    // Without the CA (system roots only) the certificate is not trusted.
    let error = match connect(
        JobQueueClient::builder(&https).retry(jobq_client::RetryPolicy::none()),
    )
    .await
    {
        Ok(client) => quota(client).await.expect_err("an untrusted certificate"),
        Err(error) => error,
    };
    assert!(
        matches!(error, Error::Connect(_) | Error::Unavailable { .. }),
        "{error:?}"
    );

    // Plaintext to the TLS port fails, and quickly.
    let plaintext = format!("http://127.0.0.1:{}", server.addr.port());
    let error =
        match connect(JobQueueClient::builder(&plaintext).retry(jobq_client::RetryPolicy::none()))
            .await
        {
            Ok(client) => quota(client).await.expect_err("plaintext to a TLS port"),
            Err(error) => error,
        };
    assert!(
        matches!(error, Error::Connect(_) | Error::Unavailable { .. }),
        "{error:?}"
    );

    // The server kept serving through the refusals.
    quota(connect(trusted).await.unwrap()).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let server = TestServer::start_configured(|config| config.tls = Some(tls(true))).await;
    let https = format!("https://127.0.0.1:{}", server.addr.port());
    let with_ca = || {
        JobQueueClient::builder(&https)
            .ca_certificate(test_tls_file("ca.pem"))
            .retry(jobq_client::RetryPolicy::none())
    };

    let with_certificate =
        with_ca().identity(test_tls_file("client.pem"), test_tls_file("client.key"));
    quota(connect(with_certificate.clone()).await.unwrap())
        .await
        .expect("a client certificate signed by the client CA is admitted");

    let error = match connect(with_ca()).await {
        Ok(client) => quota(client).await.expect_err("no client certificate"),
        Err(error) => error,
    };
    assert!(
        matches!(error, Error::Connect(_) | Error::Unavailable { .. }),
        "{error:?}"
    );

    // A certificate signed by another CA (the server's own) is refused too.
    let wrong = with_ca().identity(test_tls_file("server.pem"), test_tls_file("server.key"));
    let error = match connect(wrong).await {
        Ok(client) => quota(client)
            .await
            .expect_err("a certificate of another CA"),
        Err(error) => error,
    };
    assert!(
        matches!(error, Error::Connect(_) | Error::Unavailable { .. }),
        "{error:?}"
    );

    quota(connect(with_certificate).await.unwrap())
        .await
        .unwrap();
    server.stop().await;
}
