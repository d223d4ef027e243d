//! The kit's integration tests, against the real Postgres and RabbitMQ on
//! this machine: one test binary, one module per story.

mod background;
mod consumer;
mod helpers;
mod relay;
mod replay;
