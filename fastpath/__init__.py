"""fastflannel data plane: the C fast path (csrc/) behind a Cython Forwarder, and its Python twin."""
