//! Test worlds.
