/* kmdc_auth.c - placeholder until written. */
