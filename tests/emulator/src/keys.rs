//! Key material and the emulator's own cryptography: loading the PEM key files, SHA256withRSA
//! (PKCS#1 v1.5) signing and verification, AES-256-GCM for WeChat's encrypted notification
//! resources, and the random identifiers the providers hand out. Written independently of the
//! gateway's payment client on purpose, so that one bug cannot pass on both sides.
//!
//! Signatures are made with `ring`, not with the `rsa` crate the gateway uses: a second,
//! independent implementation of the signing side, and four to five times faster (an RSA-2048
//! signature costs about 0.6 ms here against 2.2 ms), which matters because the emulator signs
//! every notification on the same cores as the system it drives. PKCS#1 v1.5 signatures are
//! deterministic, so they are byte for byte what any other implementation produces.

use std::path::Path;
use std::sync::OnceLock;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use anyhow::{Context, Result, anyhow};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::Rng;
use rand::distr::Alphanumeric;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use rsa::rand_core::OsRng;
use rsa::signature::Verifier;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

/// An RSA private key ready to sign (SHA256withRSA, PKCS#1 v1.5).
pub struct SigningKey(RsaKeyPair);

impl SigningKey {
    /// From a parsed key: re-encoded as PKCS#8 DER, which is what `ring` reads.
    pub fn new(key: &RsaPrivateKey) -> Result<Self> {
        let der = key
            .to_pkcs8_der()
            .map_err(|e| anyhow!("the key cannot be encoded as PKCS#8: {e}"))?;
        RsaKeyPair::from_pkcs8(der.as_bytes())
            .map(Self)
            .map_err(|e| anyhow!("the key cannot sign: {e}"))
    }
}

/// The four keys the emulator works with (see `deploy/dev-keys/README.md`).
pub struct Keys {
    /// Verifies the merchant's (our gateway's) WeChat requests.
    pub wechat_merchant_public: RsaPublicKey,
    /// Signs WeChat answers and notifications (the "WeChat Pay public key" pair).
    pub wechat_platform_private: SigningKey,
    /// Verifies the application's Alipay requests.
    pub alipay_app_public: RsaPublicKey,
    /// Signs Alipay answers and notifications.
    pub alipay_private: SigningKey,
}

impl Keys {
    /// Reads `<dir>/wechat/{merchant_public_key,platform_private_key}.pem` and
    /// `<dir>/alipay/{app_public_key,alipay_private_key}.pem`.
    pub fn load(dir: &Path) -> Result<Self> {
        Ok(Self {
            wechat_merchant_public: load_public(&dir.join("wechat/merchant_public_key.pem"))?,
            wechat_platform_private: SigningKey::new(&load_private(
                &dir.join("wechat/platform_private_key.pem"),
            )?)?,
            alipay_app_public: load_public(&dir.join("alipay/app_public_key.pem"))?,
            alipay_private: SigningKey::new(&load_private(
                &dir.join("alipay/alipay_private_key.pem"),
            )?)?,
        })
    }
}

/// Reads a PKCS#8 PEM private key (`BEGIN PRIVATE KEY`).
pub fn load_private(path: &Path) -> Result<RsaPrivateKey> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    RsaPrivateKey::from_pkcs8_pem(&pem)
        .map_err(|e| anyhow!("{}: not a PKCS#8 RSA private key: {e}", path.display()))
}

/// Reads a SubjectPublicKeyInfo PEM public key (`BEGIN PUBLIC KEY`).
pub fn load_public(path: &Path) -> Result<RsaPublicKey> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    RsaPublicKey::from_public_key_pem(&pem)
        .map_err(|e| anyhow!("{}: not an SPKI RSA public key: {e}", path.display()))
}

/// SHA256withRSA (PKCS#1 v1.5), Base64 (standard alphabet, padded). Blinded with the OS RNG.
pub fn sign_sha256_rsa(key: &SigningKey, message: &[u8]) -> String {
    static RNG: OnceLock<SystemRandom> = OnceLock::new();
    let mut signature = vec![0; key.0.public().modulus_len()];
    key.0
        .sign(
            &RSA_PKCS1_SHA256,
            RNG.get_or_init(SystemRandom::new),
            message,
            &mut signature,
        )
        // Only a signature buffer of the wrong length or a failing OS RNG can fail here.
        .expect("RSA signing failed");
    B64.encode(signature)
}

/// Checks a Base64 SHA256withRSA (PKCS#1 v1.5) signature. Any decoding problem is a mismatch.
pub fn verify_sha256_rsa(key: &RsaPublicKey, message: &[u8], signature_b64: &str) -> bool {
    let Ok(raw) = B64.decode(signature_b64.trim()) else {
        return false;
    };
    let Ok(signature) = Signature::try_from(raw.as_slice()) else {
        return false;
    };
    VerifyingKey::<Sha256>::new(key.clone())
        .verify(message, &signature)
        .is_ok()
}

/// A key that belongs to nobody, for notifications deliberately signed with the wrong key.
/// Generated once per process on first use (RSA key generation is slow).
pub fn stranger_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = RsaPrivateKey::new(&mut OsRng, 2048).expect("RSA key generation");
        SigningKey::new(&key).expect("a generated key signs")
    })
}

/// AES-256-GCM as WeChat uses it for notification resources: key = the 32 ASCII bytes of the
/// APIv3 key, nonce = 12 ASCII bytes, AAD = `associated_data`; returns Base64(ciphertext ‖ tag).
pub fn aes_gcm_encrypt(
    apiv3_key: &str,
    nonce: &str,
    aad: &str,
    plaintext: &[u8],
) -> Result<String> {
    if apiv3_key.len() != 32 {
        return Err(anyhow!(
            "the APIv3 key must be 32 bytes, got {}",
            apiv3_key.len()
        ));
    }
    let nonce: [u8; 12] = nonce
        .as_bytes()
        .try_into()
        .map_err(|_| anyhow!("the nonce must be 12 bytes, got {}", nonce.len()))?;
    let cipher = Aes256Gcm::new_from_slice(apiv3_key.as_bytes()).map_err(|e| anyhow!("{e}"))?;
    let sealed = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|e| anyhow!("AES-GCM encryption failed: {e}"))?;
    Ok(B64.encode(sealed))
}

/// `n` random ASCII letters and digits.
pub fn random_alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// `n` random decimal digits.
pub fn random_digits(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// `n` random lowercase hexadecimal digits.
pub fn random_hex(n: usize) -> String {
    const HEX: &[u8] = b"0123456789abcdef";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(HEX[rng.random_range(0..16)]))
        .collect()
}

/// `n` random characters from `[0-9a-z]`.
pub fn random_lower_alnum(n: usize) -> String {
    random_from(b"0123456789abcdefghijklmnopqrstuvwxyz", n)
}

/// A WeChat OpenID as WeChat hands them out: `o` + 27 characters of `[A-Za-z0-9_-]`.
pub fn random_openid() -> String {
    format!(
        "o{}",
        random_from(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
            27
        )
    )
}

/// `n` random characters from the ASCII `set`.
fn random_from(set: &[u8], n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(set[rng.random_range(0..set.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_keys() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/dev-keys")
    }

    #[test]
    fn a_signature_made_with_a_private_key_verifies_only_with_its_public_key() {
        let private = load_private(&dev_keys().join("wechat/platform_private_key.pem")).unwrap();
        let public = load_public(&dev_keys().join("wechat/platform_public_key.pem")).unwrap();
        let other = load_public(&dev_keys().join("wechat/merchant_public_key.pem")).unwrap();
        let sig = sign_sha256_rsa(&SigningKey::new(&private).unwrap(), b"hello\n");
        assert!(verify_sha256_rsa(&public, b"hello\n", &sig));
        assert!(!verify_sha256_rsa(&public, b"hello", &sig));
        assert!(!verify_sha256_rsa(&other, b"hello\n", &sig));
        assert!(!verify_sha256_rsa(&public, b"hello\n", "not base64!"));
    }

    #[test]
    fn the_signature_is_byte_for_byte_what_the_rsa_crate_makes() {
        use rsa::signature::{SignatureEncoding, Signer};
        let private = load_private(&dev_keys().join("alipay/alipay_private_key.pem")).unwrap();
        let message = b"app_id=2021000000000000&charset=utf-8&sign_type=RSA2";
        let theirs = rsa::pkcs1v15::SigningKey::<Sha256>::new(private.clone()).sign(message);
        assert_eq!(
            sign_sha256_rsa(&SigningKey::new(&private).unwrap(), message),
            B64.encode(theirs.to_bytes())
        );
    }

    #[test]
    fn aes_gcm_output_is_ciphertext_followed_by_a_sixteen_byte_tag() {
        let key = "w20rERqvyXUYJfRcGdayYGsFga5MZsn8";
        let sealed = aes_gcm_encrypt(key, "abcdefghijkl", "transaction", b"{}").unwrap();
        assert_eq!(B64.decode(sealed).unwrap().len(), 2 + 16);
        assert!(aes_gcm_encrypt("short", "abcdefghijkl", "", b"x").is_err());
    }
}
