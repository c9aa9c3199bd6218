//! Image transforms with torchvision's semantics.
