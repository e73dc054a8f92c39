//! Pictures for people: sample grids (PNG).

pub mod canvas;
pub mod grid;
