//! Cross-crate test suites for Keysmith (not published).
