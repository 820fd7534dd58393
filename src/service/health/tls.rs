//! TLS for HTTPS checks, through rustls (ring provider). A check's
//! `TlsCheck` becomes one client configuration, built once and shared by
//! every probe with the same settings until the checks restart (a reload
//! reads a changed `ca` file again: `forget`). Without `verify` any
//! certificate is taken (a backend's self-signed one, as HAProxy's `verify
//! none`), but the handshake's signatures are still checked against it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::probe::Failure;
use crate::model::TlsCheck;

type Configs = Mutex<HashMap<TlsCheck, Arc<ClientConfig>>>;

fn configs() -> &'static Configs {
    static CONFIGS: OnceLock<Configs> = OnceLock::new();
    CONFIGS.get_or_init(Default::default)
}

/// Drops the configurations built so far (the checks restart).
pub fn forget() {
    if let Ok(mut c) = configs().lock() {
        c.clear();
    }
}

/// The client configuration for `tls`.
pub fn config(tls: &TlsCheck) -> Result<Arc<ClientConfig>, Failure> {
    let mut c = configs().lock().map_err(|_| "TLS settings lock poisoned")?;
    if let Some(cfg) = c.get(tls) {
        return Ok(cfg.clone());
    }
    let cfg = Arc::new(build(tls)?);
    c.insert(tls.clone(), cfg.clone());
    Ok(cfg)
}

// rustls deprecates ring's provider for lacking post-quantum key exchange,
// which a health check between a balancer and its backends can do without;
// aws-lc-rs, which has it, needs cmake and a longer build.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(tls: &TlsCheck) -> Result<ClientConfig, Failure> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let cfg = if tls.verify {
        builder
            .with_root_certificates(roots(tls)?)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth()
    };
    Ok(cfg)
}

/// The CAs a verifying check trusts: its `ca` file's, else the host's.
fn roots(tls: &TlsCheck) -> Result<RootCertStore, Failure> {
    let mut store = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = match &tls.ca {
        Some(path) => CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| format!("reading CA file {}: {e}", path.display()))?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(match &tls.ca {
            Some(path) => format!("CA file {} holds no certificate", path.display()),
            None => "the host has no CA certificates to verify with".into(),
        });
    }
    Ok(store)
}

/// The name the handshake sends and (with `verify`) checks: `sni`, else
/// the Host header's name if it is a name, else the backend's address
/// (no SNI is sent for an address).
pub fn server_name(
    tls: &TlsCheck,
    host: Option<&str>,
    addr: IpAddr,
) -> Result<ServerName<'static>, Failure> {
    let name = tls.sni.as_deref().or_else(|| {
        host.map(|h| match h.rsplit_once(':') {
            Some((name, port))
                if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') =>
            {
                name
            }
            _ => h,
        })
    });
    match name {
        Some(n) if n.parse::<IpAddr>().is_err() => {
            ServerName::try_from(n.to_string()).map_err(|_| format!("{n:?} is not a server name"))
        }
        _ => Ok(ServerName::IpAddress(addr.into())),
    }
}

/// `ServerCertVerifier`'s signature methods, each calling the rustls
/// function of its own name with the provider's algorithms.
macro_rules! signature_checks {
    ($($check:ident),+) => {$(
        fn $check(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            $check(message, cert, dss, &self.0.signature_verification_algorithms)
        }
    )+};
}

/// Takes any certificate; the handshake's signatures must still verify.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    // Both TLS versions' handshake signatures, checked against the
    // certificate with the provider's algorithms (rustls's own functions).
    signature_checks!(verify_tls12_signature, verify_tls13_signature);

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
