//! A throwaway certificate authority for the TLS registry, and the token issuer's key and
//! self-signed certificate that the registry trusts through `auth.token.rootcertbundle`.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// Files of a test CA and a server certificate for 127.0.0.1 / localhost signed by it.
pub struct ServerPki {
    pub ca_pem: PathBuf,
    pub cert_dir: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

pub fn server_pki(dir: &Path) -> ServerPki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cairn test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let server_key = KeyPair::generate().expect("server key");
    let server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
    let server = server_params
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server certificate");
    let cert_dir = dir.join("certs");
    std::fs::create_dir_all(&cert_dir).expect("cert dir");
    let pki = ServerPki {
        ca_pem: dir.join("ca.pem"),
        cert_dir: cert_dir.clone(),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    };
    std::fs::write(&pki.ca_pem, ca.pem()).expect("write CA");
    // skopeo's --cert-dir wants the CA as ca.crt.
    std::fs::write(cert_dir.join("ca.crt"), ca.pem()).expect("write ca.crt");
    std::fs::write(&pki.server_cert, server.pem()).expect("write server cert");
    std::fs::write(&pki.server_key, server_key.serialize_pem()).expect("write server key");
    pki
}

/// The token issuer's signing key (PKCS#8 DER) and its self-signed certificate.
pub struct TokenIssuer {
    pub pkcs8: Vec<u8>,
    pub cert_der: Vec<u8>,
    pub cert_pem_path: PathBuf,
}

pub fn token_issuer(dir: &Path) -> TokenIssuer {
    let key = KeyPair::generate().expect("issuer key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("issuer params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cairn test token issuer");
    let cert = params.self_signed(&key).expect("issuer certificate");
    let cert_pem_path = dir.join("token-issuer.pem");
    std::fs::write(&cert_pem_path, cert.pem()).expect("write issuer cert");
    TokenIssuer {
        pkcs8: key.serialize_der(),
        cert_der: cert.der().to_vec(),
        cert_pem_path,
    }
}
