/* kmdc_wrap.c - placeholder until written. */
