"""The tool-call fast lane: raw forwarding of handshake-era calls between two HTTP hops."""
