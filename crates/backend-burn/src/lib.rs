//! llama-family models on burn, backends chosen by Cargo feature (`ndarray`, `wgpu`,
//! `cuda`). Not built yet (issue 7): this crate holds its place in the layering.
