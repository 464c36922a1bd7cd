//! Byte streams between the servers and the nodes, carried by the agent
//! tunnel: the multiplexer both ends run (`mux`), and the HTTP/1.1
//! upgrade-aware forwarding that exec, attach and port-forward take from
//! the apiserver to the kubelet and on to the runtime (`upgrade`).

pub mod mux;
pub mod upgrade;
