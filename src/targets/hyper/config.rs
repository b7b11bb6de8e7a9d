//! Hyper target settings, and its entry in the target registry.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::HyperTarget;
use crate::error::Result;
use crate::targets::util::default_root;
use crate::targets::{Target, TargetKind};

/// Tableau Hyper target settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HyperConfig {
    /// A local directory (a path or `file://` URL) holding the `.hyper` files. Default:
    /// `<data_dir>/<target name>`.
    pub root: Option<String>,
    /// The `hyperd` binary to run. Default: `$QUIVER_HYPERD`, else the hyperd of a
    /// `tableauhyperapi` that pip installed, else `hyperd` on `PATH`.
    pub hyperd: Option<PathBuf>,
    /// Where hyperd writes its diagnostic log. Default: `<temp dir>/quiver-hyperd/<target
    /// name>`, outside the root so that readers of the root see only extracts.
    pub log_dir: Option<PathBuf>,
}

impl HyperConfig {
    /// The log directory of the target called `name`.
    pub(crate) fn log_dir(&self, name: &str) -> PathBuf {
        self.log_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("quiver-hyperd").join(name))
    }

    /// The root directory, or why the setting names none.
    pub(crate) fn root_dir(&self) -> Result<PathBuf, String> {
        let root = self
            .root
            .as_deref()
            .ok_or("root is not set; set root = \"<directory>\"")?;
        match root.strip_prefix("file://") {
            Some(path) => Ok(PathBuf::from(path)),
            None if root.contains("://") => Err(format!(
                "root {root:?} is not a local directory: hyperd writes .hyper files on local disk"
            )),
            None => Ok(PathBuf::from(root)),
        }
    }
}

/// The `hyper` kind: one Tableau Hyper extract per asset, written by Tableau's own hyperd.
pub struct Hyper;

impl TargetKind for Hyper {
    type Config = HyperConfig;

    fn validate(config: &HyperConfig) -> Result<(), String> {
        if config.root.is_some() {
            config.root_dir()?;
        }
        if config
            .hyperd
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err("hyperd is empty; name the hyperd binary or leave the setting out".into());
        }
        Ok(())
    }

    fn default_location(config: &mut HyperConfig, data_dir: &Path, name: &str) {
        default_root(&mut config.root, data_dir, name);
    }

    fn unshareable(_config: &HyperConfig) -> Option<String> {
        Some(
            "it keeps .hyper files on local disk and runs its own hyperd, which other replicas \
             cannot share; run one replica"
                .to_string(),
        )
    }

    fn build(name: &str, config: &HyperConfig) -> Result<Arc<dyn Target>> {
        Ok(Arc::new(HyperTarget::new(name, config)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> HyperConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_root_is_a_local_directory() {
        let local = config("root = \"file:///srv/extracts\"");
        assert_eq!(local.root_dir().unwrap(), PathBuf::from("/srv/extracts"));
        let err = Hyper::validate(&config("root = \"s3://bucket/x\"")).unwrap_err();
        assert!(err.contains("not a local directory"), "{err}");
        assert!(Hyper::validate(&config("hyperd = \"\"")).is_err());
    }

    #[test]
    fn the_log_directory_defaults_outside_the_root() {
        let dir = config("root = \"/srv/extracts\"").log_dir("tableau");
        assert!(dir.ends_with("quiver-hyperd/tableau"), "{}", dir.display());
        assert!(!dir.starts_with("/srv/extracts"));
    }

    #[test]
    fn unknown_settings_are_refused() {
        assert!(toml::from_str::<HyperConfig>("hyper_d = \"/x\"").is_err());
    }
}
