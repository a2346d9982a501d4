//! RSA keys from PEM files: the merchant's private key (signs our requests) and the provider's
//! public key (verifies its answers and notifications), SHA256withRSA (PKCS#1 v1.5) both ways.
//!
//! The `rsa` crate reads the PEM files (PKCS#8 or PKCS#1); AWS-LC (`aws-lc-rs`, the crypto
//! provider rustls already builds) signs and verifies: about 0.4 ms per RSA-2048 signature and
//! 25 µs per verification here, against 2.2 ms and 200 µs for the pure-Rust `rsa` crate.
//! Keys under 2048 bits are refused, as both providers issue 2048-bit keys.
//!
//! Also the development key pairs committed under `deploy/dev-keys/`: public, so a deployment
//! outside `local` that configures one of them is refused ([`DevKeyError`]).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use std::path::Path;
use std::sync::Arc;

/// A private key that signs.
#[derive(Clone)]
pub(crate) struct Signer(Arc<RsaKeyPair>, RsaPublicKey);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer([redacted])")
    }
}

impl Signer {
    pub(crate) fn from_pem_file(key: &'static str, path: &Path) -> Result<Self, KeyError> {
        let pem = read(key, path)?;
        let private = RsaPrivateKey::from_pkcs8_pem(&pem)
            .or_else(|_| {
                use rsa::pkcs1::DecodeRsaPrivateKey;
                RsaPrivateKey::from_pkcs1_pem(&pem)
            })
            .map_err(|e| KeyError::new(key, path, format!("not an RSA private key: {e}")))?;
        let unusable = |e: String| KeyError::new(key, path, format!("cannot sign: {e}"));
        let der = private
            .to_pkcs8_der()
            .map_err(|e| unusable(e.to_string()))?;
        let pair = RsaKeyPair::from_pkcs8(der.as_bytes()).map_err(|e| unusable(e.to_string()))?;
        Ok(Self(Arc::new(pair), private.to_public_key()))
    }

    /// Base64 of SHA256withRSA over `message` (AWS-LC blinds the private-key operation, so
    /// timing says nothing of the key).
    pub(crate) fn sign(&self, message: &[u8]) -> String {
        let mut signature = vec![0; self.0.public_modulus_len()];
        self.0
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut signature,
            )
            // Only a buffer of the wrong length or a failing system RNG can fail here.
            .expect("RSA signing failed");
        STANDARD.encode(signature)
    }

    pub(crate) fn public_der(&self) -> Vec<u8> {
        public_der(&self.1)
    }
}

/// A public key that verifies: its PKCS#1 DER, which AWS-LC reads, and the key.
#[derive(Clone, Debug)]
pub(crate) struct Verifying(Vec<u8>, RsaPublicKey);

impl Verifying {
    pub(crate) fn from_pem_file(key: &'static str, path: &Path) -> Result<Self, KeyError> {
        let pem = read(key, path)?;
        Self::from_pem(&pem).map_err(|e| KeyError::new(key, path, e))
    }

    pub(crate) fn from_pem(pem: &str) -> Result<Self, String> {
        let public = RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| {
                use rsa::pkcs1::DecodeRsaPublicKey;
                RsaPublicKey::from_pkcs1_pem(pem)
            })
            .map_err(|e| format!("not an RSA public key: {e}"))?;
        if public.size() < 256 {
            return Err(format!(
                "an RSA key of {} bits; 2048 at least",
                public.size() * 8
            ));
        }
        let pkcs1 = public
            .to_pkcs1_der()
            .map_err(|e| format!("not an RSA public key: {e}"))?;
        Ok(Self(pkcs1.as_bytes().to_vec(), public))
    }

    /// Whether `signature_b64` is a valid SHA256withRSA signature of `message`.
    pub(crate) fn verify(&self, message: &[u8], signature_b64: &str) -> bool {
        let Ok(bytes) = STANDARD.decode(signature_b64.trim()) else {
            return false;
        };
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.0)
            .verify(message, &bytes)
            .is_ok()
    }

    pub(crate) fn public_der(&self) -> Vec<u8> {
        public_der(&self.1)
    }
}

fn public_der(key: &RsaPublicKey) -> Vec<u8> {
    key.to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .unwrap_or_default()
}

fn read(key: &'static str, path: &Path) -> Result<String, KeyError> {
    if path.as_os_str().is_empty() {
        return Err(KeyError::new(key, path, "is required".to_owned()));
    }
    std::fs::read_to_string(path).map_err(|e| KeyError::new(key, path, format!("unreadable: {e}")))
}

/// A key file that could not be used; names the setting and the file, never the key.
#[derive(Debug, thiserror::Error)]
#[error("{key} ({path}): {reason}")]
pub struct KeyError {
    pub key: &'static str,
    pub path: String,
    pub reason: String,
}

impl KeyError {
    fn new(key: &'static str, path: &Path, reason: String) -> Self {
        Self {
            key,
            path: path.display().to_string(),
            reason,
        }
    }
}

/// The public halves of every development key pair in `deploy/dev-keys/` (and the development
/// APIv3 key). Public keys and a public test value: compiling them in reveals nothing.
const DEV_PUBLIC_KEYS: [&str; 4] = [
    include_str!("../../../deploy/dev-keys/wechat/merchant_public_key.pem"),
    include_str!("../../../deploy/dev-keys/wechat/platform_public_key.pem"),
    include_str!("../../../deploy/dev-keys/alipay/app_public_key.pem"),
    include_str!("../../../deploy/dev-keys/alipay/alipay_public_key.pem"),
];
pub(crate) const DEV_APIV3_KEY: &str = "w20rERqvyXUYJfRcGdayYGsFga5MZsn8";
/// The WeChat app secrets of `deploy/config/local.toml` (the emulator's apps).
pub(crate) const DEV_APP_SECRETS: [&str; 2] = [
    "memberline-dev-miniprogram-secret",
    "memberline-dev-official-account-secret",
];

/// A development key configured outside the `local` environment.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} is one of the public development keys of deploy/dev-keys/ (for local use only); \
     configure your own key"
)]
pub struct DevKeyError(pub &'static str);

/// Whether a key (given by the DER of its public half) is one of the development keys.
pub(crate) fn is_dev_key(public_der: &[u8]) -> bool {
    DEV_PUBLIC_KEYS
        .iter()
        .filter_map(|pem| Verifying::from_pem(pem).ok())
        .any(|dev| dev.public_der() == public_der)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(path: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/dev-keys")
            .join(path)
    }

    #[test]
    fn a_signature_verifies_with_the_matching_public_key_only() {
        let signer = Signer::from_pem_file("k", &dev("wechat/merchant_private_key.pem")).unwrap();
        let mine = Verifying::from_pem_file("k", &dev("wechat/merchant_public_key.pem")).unwrap();
        let other = Verifying::from_pem_file("k", &dev("wechat/platform_public_key.pem")).unwrap();
        let signature = signer.sign(b"hello\n");
        assert!(mine.verify(b"hello\n", &signature));
        assert!(!mine.verify(b"hello!\n", &signature));
        assert!(!other.verify(b"hello\n", &signature));
        assert!(!mine.verify(b"hello\n", "not base64!"));
    }

    #[test]
    fn every_development_key_is_recognised_and_a_fresh_one_is_not() {
        for path in [
            "wechat/merchant_private_key.pem",
            "wechat/platform_private_key.pem",
            "alipay/app_private_key.pem",
            "alipay/alipay_private_key.pem",
        ] {
            let signer = Signer::from_pem_file("k", &dev(path)).unwrap();
            assert!(is_dev_key(&signer.public_der()), "{path}");
        }
        let fresh = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        assert!(!is_dev_key(&public_der(&fresh.to_public_key())));
    }

    #[test]
    fn a_key_under_2048_bits_is_refused_with_the_setting_named() {
        use rsa::pkcs8::LineEnding;
        let weak = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let path = std::env::temp_dir().join(format!("weak-{}.pem", std::process::id()));
        std::fs::write(&path, weak.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let err = Signer::from_pem_file("payments.alipay.app_private_key_path", &path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            err.to_string()
                .contains("payments.alipay.app_private_key_path")
        );
        assert!(err.to_string().contains("cannot sign"), "{err}");
    }

    /// PKCS#1 v1.5 signatures are deterministic: AWS-LC's must be the `rsa` crate's, byte for
    /// byte, and each side must accept the other's.
    #[test]
    fn the_signature_is_byte_for_byte_what_the_rsa_crate_makes() {
        use rsa::signature::{SignatureEncoding, Signer as _};
        let pem = std::fs::read_to_string(dev("alipay/app_private_key.pem")).unwrap();
        let private = RsaPrivateKey::from_pkcs8_pem(&pem).unwrap();
        let theirs = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(private).sign(b"a=1&b=2");
        let signer = Signer::from_pem_file("k", &dev("alipay/app_private_key.pem")).unwrap();
        assert_eq!(signer.sign(b"a=1&b=2"), STANDARD.encode(theirs.to_bytes()));
    }

    #[test]
    fn a_public_key_under_2048_bits_is_refused_when_loaded() {
        use rsa::pkcs8::LineEnding;
        let weak = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let pem = weak
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let err = Verifying::from_pem(&pem).unwrap_err();
        assert!(err.contains("1024 bits"), "{err}");
    }

    #[test]
    fn a_missing_key_file_names_the_setting() {
        let err = Signer::from_pem_file("payments.wechat.merchant_private_key_path", Path::new(""))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("payments.wechat.merchant_private_key_path")
        );
    }
}
