//! The Flight data path's bytes, copied as little as Arrow allows. A DoPut request is read
//! into aligned buffers (`put_framing`) and decoded into batches that share them
//! (`put_decode`); a DoGet's batches are encoded as IPC messages whose bodies are their own
//! buffers (`get_encode`) and framed for the socket piece by piece (`get_framing`). The
//! server's routes and the service use these; nothing here knows either.

pub mod framing;
pub mod get_encode;
pub mod get_framing;
pub mod put_decode;
pub mod put_framing;
