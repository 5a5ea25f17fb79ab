//! jsonwebtoken's crypto provider for HS256 alone (HMAC-SHA256 from RustCrypto's `hmac`).
//!
//! cairn's tokens are HS256: the api issues them, the api and the gateway verify them. The
//! crate's `rust_crypto` feature installs a provider that picks the algorithm at run time, so
//! every binary using it links RSA, ECDSA (P-256, P-384) and EdDSA too, with their big-number
//! code. This provider is the same HMAC code and nothing else; any other algorithm is refused
//! as `InvalidAlgorithm`. jsonwebtoken still parses, validates claims and compares signatures
//! in constant time (`verify_slice`): only the primitive is chosen here.
//!
//! [`install`] makes it the process default; call it before the first `encode` or `decode`
//! (constructing a key holder is the natural place). It never replaces another provider.

use hmac::{Hmac, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes the HS256-only provider jsonwebtoken's process default. Calling it again is harmless.
pub fn install() {
    // Err means a provider is installed already: ours from an earlier call, since this
    // workspace enables no other.
    let _ = PROVIDER.install_default();
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    if *algorithm != Algorithm::HS256 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    if key.family() != AlgorithmFamily::Hmac {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let mac =
        HmacSha256::new_from_slice(key.as_bytes()).map_err(|_| ErrorKind::InvalidKeyFormat)?;
    Ok(Box::new(Hs256(mac)))
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    if *algorithm != Algorithm::HS256 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    if key.family() != AlgorithmFamily::Hmac {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let mac = HmacSha256::new_from_slice(key.try_get_as_bytes()?)
        .map_err(|_| ErrorKind::InvalidKeyFormat)?;
    Ok(Box::new(Hs256(mac)))
}

/// HMAC-SHA256 keyed once; each use works on a clone so the keyed state is reused.
struct Hs256(HmacSha256);

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        let mut mac = self.0.clone();
        mac.update(message);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), signature::Error> {
        let mut mac = self.0.clone();
        mac.update(message);
        mac.verify_slice(signature)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation, decode, encode};
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Claims {
        sub: String,
        name: String,
        iat: u64,
    }

    fn no_expiry() -> Validation {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation
    }

    /// The HS256 example of RFC 7519's community (jwt.io), signed with "your-256-bit-secret".
    const KNOWN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    const KNOWN_SECRET: &[u8] = b"your-256-bit-secret";

    fn known_claims() -> Claims {
        Claims {
            sub: "1234567890".into(),
            name: "John Doe".into(),
            iat: 1_516_239_022,
        }
    }

    #[test]
    fn verifies_the_known_token_and_its_own() {
        install();
        let key = DecodingKey::from_secret(KNOWN_SECRET);
        let data = decode::<Claims>(KNOWN, &key, &no_expiry()).expect("known token verifies");
        assert_eq!(data.claims, known_claims());
        let signed = encode(
            &Header::new(Algorithm::HS256),
            &known_claims(),
            &EncodingKey::from_secret(KNOWN_SECRET),
        )
        .expect("sign");
        let data = decode::<Claims>(&signed, &key, &no_expiry()).expect("round trip");
        assert_eq!(data.claims, known_claims());
    }

    #[test]
    fn refuses_a_wrong_secret_a_tampered_token_and_other_algorithms() {
        install();
        let wrong = DecodingKey::from_secret(b"another secret");
        let err = decode::<Claims>(KNOWN, &wrong, &no_expiry()).expect_err("wrong secret");
        assert_eq!(err.kind(), &ErrorKind::InvalidSignature);

        let mut tampered = KNOWN.to_owned();
        tampered.replace_range(40..41, "A");
        let key = DecodingKey::from_secret(KNOWN_SECRET);
        assert!(decode::<Claims>(&tampered, &key, &no_expiry()).is_err());

        let signer = encode(
            &Header::new(Algorithm::HS512),
            &known_claims(),
            &EncodingKey::from_secret(KNOWN_SECRET),
        );
        assert_eq!(
            signer.expect_err("HS512 is not provided").kind(),
            &ErrorKind::InvalidAlgorithm
        );
    }
}
