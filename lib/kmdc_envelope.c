/* kmdc_envelope.c - placeholder until written. */
