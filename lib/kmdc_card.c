/* kmdc_card.c - placeholder until written. */
