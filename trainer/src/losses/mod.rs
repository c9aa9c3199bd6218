//! The self-supervised losses, one file each, as pure functions of tensors.
//!
//! Each function takes the projections (or logits, patches) a method computed and the
//! hyper-parameters the paper names (`temperature`, `lambda`, `center_momentum`), and returns
//! the loss as a `[1]` tensor; state a loss carries between steps (DINO's centre, a queue) is
//! passed in and the updated value returned, so the method that owns it decides when it is
//! saved. The methods in [`crate::objectives`] combine these with their models; each loss is
//! checked against the reference implementations' values in `shared/testdata/ssl-goldens/`.

pub mod dino;
pub mod ibot;
pub mod msn;
pub mod simmim;
pub mod swav;
