/* Tokenize texts with a generated project's tokenizer (compiled with --prefix tok) and print the ids.
 *
 *     tokenize_text TEXTS [MODEL]
 *
 * TEXTS holds records of a 4-byte little-endian length and that many bytes of text. For each record one
 * line: the ids the text needs, then TOK_TOKENIZER_SEQ_LEN ids, then as many mask values. With MODEL
 * (any second argument; the program must then be linked with libtok.a) every record's ids and mask are
 * also run through tok_invoke and a second line gives the first output's values. */
#include <stdio.h>
#include <stdlib.h>

#include "tok_tokenizer.h"

static TOK_IDS_T ids[TOK_TOKENIZER_SEQ_LEN];
static TOK_MASK_T mask[TOK_TOKENIZER_SEQ_LEN];

int main(int argc, char **argv) {
  FILE *file;
  static char text[1 << 16];
  unsigned char header[4];
  size_t i;
  if (argc < 2 || (file = fopen(argv[1], "rb")) == NULL) {
    fprintf(stderr, "usage: tokenize_text TEXTS [MODEL]\n");
    return 2;
  }
#ifdef TOK_WITH_MODEL
  if (tok_init() != TOK_OK) {
    return 1;
  }
#endif
  while (fread(header, 1, 4, file) == 4) {
    size_t length = (size_t)header[0] | (size_t)header[1] << 8 | (size_t)header[2] << 16 | (size_t)header[3] << 24;
    size_t needed = 0;
    if (length > sizeof text || fread(text, 1, length, file) != length) {
      return 2;
    }
    if (tok_tokenize(text, length, ids, mask, &needed) != TOK_OK) {
      return 1;
    }
    printf("%lu", (unsigned long)needed);
    for (i = 0; i < TOK_TOKENIZER_SEQ_LEN; ++i) {
      printf(" %ld", (long)ids[i]);
    }
    for (i = 0; i < TOK_TOKENIZER_SEQ_LEN; ++i) {
      printf(" %ld", (long)mask[i]);
    }
    printf("\n");
#ifdef TOK_WITH_MODEL
    {
      static float logits[TOK_OUTPUT_LOGITS_ELEMENTS];
      if (tok_invoke(ids, mask, logits) != TOK_OK) {
        return 1;
      }
      for (i = 0; i < TOK_OUTPUT_LOGITS_ELEMENTS; ++i) {
        printf(i ? " %.9g" : "%.9g", (double)logits[i]);
      }
      printf("\n");
    }
#endif
  }
  /* Bad arguments are refused, not crashed on. */
  if (tok_tokenize(NULL, 1, ids, mask, NULL) != TOK_ERROR_BAD_ARGUMENT ||
      tok_tokenize("a", 1, NULL, mask, NULL) != TOK_ERROR_BAD_ARGUMENT ||
      tok_tokenize(NULL, 0, ids, NULL, NULL) != TOK_OK) {
    return 1;
  }
  fclose(file);
  return 0;
}
