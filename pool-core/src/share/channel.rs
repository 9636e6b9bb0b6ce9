//! Channels between processes (being written).
