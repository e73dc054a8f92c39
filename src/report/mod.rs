//! Pictures for people: sample grids (PNG).

pub mod grid;
