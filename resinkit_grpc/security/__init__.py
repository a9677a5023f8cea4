"""Who may call, over what: TLS and mutual TLS for the transport, the caller's principal."""
