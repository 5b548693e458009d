//! What the HTTPS client trusts: the system's roots, and PEM bundles on
//! top (`--ca-bundle`/`AWS_CA_BUNDLE`, `--jwks-ca-file`), or a private CA
//! alone (the API server's `ca.crt`).

use std::path::{Path, PathBuf};

use aws_smithy_http_client::tls::TrustStore;
use base64::Engine;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tracing::{info, warn};

use crate::env::Env;

/// The environment variable the other AWS SDKs and the CLI read.
pub const ENV: &str = "AWS_CA_BUNDLE";

#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("reading CA bundle {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA bundle {} is not PEM: {source}", .path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("CA bundle {} holds no certificate usable as a trust anchor", .path.display())]
    Empty { path: PathBuf },
}

/// The usable certificates of a bundle file, re-encoded one per PEM block.
#[derive(Debug, Clone)]
pub struct CaBundle {
    path: PathBuf,
    certificates: Vec<String>,
}

impl CaBundle {
    /// `--ca-bundle` wins over `AWS_CA_BUNDLE`; an empty variable is unset.
    pub fn path_from(flag: Option<&Path>, env: &Env) -> Option<PathBuf> {
        flag.map(Path::to_path_buf)
            .or_else(|| env.var(ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
    }

    pub fn load(path: &Path) -> Result<Self, CaBundleError> {
        let bytes = std::fs::read(path).map_err(|source| CaBundleError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut certificates = Vec::new();
        let mut skipped = 0usize;
        for cert in CertificateDer::pem_slice_iter(&bytes) {
            let cert = cert.map_err(|source| CaBundleError::Pem {
                path: path.to_owned(),
                source,
            })?;
            // The same check the SDK's rustls setup makes (and panics on).
            if rustls::RootCertStore::empty().add(cert.clone()).is_ok() {
                certificates.push(pem(&cert));
            } else {
                skipped += 1;
            }
        }
        if skipped > 0 {
            warn!(path = %path.display(), skipped, "CA bundle: certificates not usable as trust anchors were skipped");
        }
        if certificates.is_empty() {
            return Err(CaBundleError::Empty {
                path: path.to_owned(),
            });
        }
        info!(path = %path.display(), certificates = certificates.len(), "trusting the CA bundle");
        Ok(Self {
            path: path.to_owned(),
            certificates,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.certificates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }
}

fn pem(cert: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// What a client trusts: the system's roots or not, and bundles on top.
#[derive(Debug, Clone)]
pub struct Trust {
    system_roots: bool,
    certificates: Vec<String>,
}

impl Trust {
    /// The system's roots.
    pub fn system() -> Self {
        Self {
            system_roots: true,
            certificates: Vec::new(),
        }
    }

    /// Nothing but the bundles added: a private PKI (the API server's CA).
    pub fn private() -> Self {
        Self {
            system_roots: false,
            certificates: Vec::new(),
        }
    }

    /// `bundle`'s certificates as well (if any).
    pub fn and(mut self, bundle: Option<&CaBundle>) -> Self {
        if let Some(b) = bundle {
            self.certificates.extend(b.certificates.iter().cloned());
        }
        self
    }

    pub(super) fn store(&self) -> TrustStore {
        let mut trust = TrustStore::empty().with_native_roots(self.system_roots);
        for cert in &self.certificates {
            trust.add_pem_certificate(cert.as_bytes());
        }
        trust
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str, content: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("pia-ca-{}-{name}", std::process::id()));
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn flag_wins_and_empty_env_is_unset() {
        let env = Env::from_pairs(&[(ENV, "/env.pem")]);
        let none = Env::from_pairs(&[(ENV, "")]);
        assert_eq!(
            CaBundle::path_from(Some(Path::new("/flag.pem")), &env),
            Some(PathBuf::from("/flag.pem"))
        );
        assert_eq!(
            CaBundle::path_from(None, &env),
            Some(PathBuf::from("/env.pem"))
        );
        assert_eq!(CaBundle::path_from(None, &none), None);
    }

    #[test]
    fn unusable_files_are_errors_that_name_the_file() {
        let missing = std::env::temp_dir().join("pia-ca-does-not-exist.pem");
        let e = CaBundle::load(&missing).unwrap_err();
        assert!(e.to_string().contains("pia-ca-does-not-exist.pem"), "{e}");

        let empty = tmp("empty.pem", "no PEM here\n");
        assert!(matches!(
            CaBundle::load(&empty),
            Err(CaBundleError::Empty { .. })
        ));

        let garbage = tmp(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        );
        assert!(CaBundle::load(&garbage).is_err());
        let _ = std::fs::remove_file(empty);
        let _ = std::fs::remove_file(garbage);
    }
}
