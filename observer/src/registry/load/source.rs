//! What validation reads besides the registry text: the files it names (OpenAPI documents, key files) and
//! environment variables (`key_env`). Passed in as a `Source` so the validation itself does no I/O and is tested
//! with in-memory content.
use std::path::Path;

/// Files and environment variables a registry refers to.
pub trait Source {
    /// The text of the file at `path` (already resolved against the registry's directory).
    fn read_file(&self, path: &Path) -> std::io::Result<String>;
    /// The value of environment variable `name`, if set.
    fn env_var(&self, name: &str) -> Option<String>;
}

/// The real file system and this process's environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

impl Source for System {
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        super::super::yaml::read_text(path)
    }

    fn env_var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Files and variables held in memory (tests, and callers that already hold the content).
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub struct InMemory {
    pub files: std::collections::HashMap<std::path::PathBuf, String>,
    pub env: std::collections::HashMap<String, String>,
}

#[cfg(test)]
impl InMemory {
    pub fn file(mut self, path: impl Into<std::path::PathBuf>, text: &str) -> Self {
        self.files.insert(path.into(), text.to_string());
        self
    }

    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_string(), value.to_string());
        self
    }
}

#[cfg(test)]
impl Source for InMemory {
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        self.files.get(path).cloned().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
        })
    }

    fn env_var(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
}
