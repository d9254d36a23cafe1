/*
 * fuzz_runtime.c - a libFuzzer target for the API of a generated bert-tiny runtime (prefix rt3; rt3c tests).
 *
 * An input is a program of calls: each first byte picks one, the bytes after it are its arguments.
 * Whatever the bytes, every call must keep its documented contract (the status it returns, the level it
 * leaves), and under ASan + UBSan no call may read or write outside its memory:
 *   0 rt3_set_level(int from 4 bytes)           OK inside [0, RT3_NUM_LEVELS), else RT3_ERROR_BAD_LEVEL
 *   1 rt3_on_frequency(uint32 from 4 bytes)      OK, and the active level stays in range
 *   2 rt3_invoke(ids and mask from the bytes)    OK, or RT3_ERROR_INPUT_OUT_OF_RANGE iff an id is outside
 *                                                [0, RT3_INPUT_INPUT_IDS_LIMIT) (the outputs then untouched)
 *   3 rt3_invoke with a NULL input or output     RT3_ERROR_BAD_ARGUMENT
 *   4 rt3_init_with_arena(misaligned or short)   its error, then rt3_init() again
 * A broken contract traps, which libFuzzer reports as a crash.
 */
#include <stdint.h>
#include <string.h>

#include "rt3_model.h"

static int64_t ids[RT3_INPUT_INPUT_IDS_ELEMENTS];
static int64_t mask[RT3_INPUT_ATTENTION_MASK_ELEMENTS];
static float out[RT3_OUTPUT_LOGITS_ELEMENTS];
static unsigned char arena[RT3_ARENA_BYTES + RT3_ARENA_ALIGNMENT] __attribute__((aligned(RT3_ARENA_ALIGNMENT)));

static void expect(int condition) {
  if (!condition) __builtin_trap();
}

/* Take up to `count` bytes from the input into `target` (the rest of `target` keeps its bytes). */
static void take(void *target, size_t count, const uint8_t **data, size_t *size) {
  size_t n = count < *size ? count : *size;
  memcpy(target, *data, n);
  *data += n;
  *size -= n;
}

static int ids_in_range(void) {
  for (size_t i = 0; i < RT3_INPUT_INPUT_IDS_ELEMENTS; i++) {
    if (ids[i] < 0 || ids[i] >= RT3_INPUT_INPUT_IDS_LIMIT) return 0;
  }
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  expect(rt3_init() == RT3_OK && rt3_active_level() == 0);
  memset(ids, 0, sizeof ids);
  for (size_t i = 0; i < RT3_INPUT_ATTENTION_MASK_ELEMENTS; i++) mask[i] = 1;
  while (size > 0) {
    uint8_t call = data[0] % 5;
    data++;
    size--;
    if (call == 0) {
      int32_t level = 0;
      take(&level, sizeof level, &data, &size);
      rt3_status_t status = rt3_set_level(level);
      expect(status == ((level >= 0 && level < RT3_NUM_LEVELS) ? RT3_OK : RT3_ERROR_BAD_LEVEL));
    } else if (call == 1) {
      uint32_t khz = 0;
      take(&khz, sizeof khz, &data, &size);
      expect(rt3_on_frequency(khz) == RT3_OK);
    } else if (call == 2) {
      take(ids, sizeof ids, &data, &size);
      take(mask, sizeof mask, &data, &size);
      static const float untouched = 12345.0f;
      out[0] = untouched;
      rt3_status_t status = rt3_invoke(ids, mask, out);
      if (ids_in_range()) {
        expect(status == RT3_OK);
      } else {
        expect(status == RT3_ERROR_INPUT_OUT_OF_RANGE && out[0] == untouched);
      }
    } else if (call == 3) {
      expect(rt3_invoke(NULL, mask, out) == RT3_ERROR_BAD_ARGUMENT);
      expect(rt3_invoke(ids, mask, NULL) == RT3_ERROR_BAD_ARGUMENT);
    } else {
      uint8_t offset = 0;
      take(&offset, sizeof offset, &data, &size);
      size_t shift = 1 + offset % (RT3_ARENA_ALIGNMENT - 1);
      expect(rt3_init_with_arena(arena + shift, RT3_ARENA_BYTES) == RT3_ERROR_ARENA_MISALIGNED);
      expect(rt3_init_with_arena(arena, RT3_ARENA_BYTES - shift) == RT3_ERROR_ARENA_TOO_SMALL);
      expect(rt3_init_with_arena(NULL, RT3_ARENA_BYTES) == RT3_ERROR_BAD_ARGUMENT);
      expect(rt3_init() == RT3_OK);
    }
    int level = rt3_active_level();
    expect(level >= 0 && level < RT3_NUM_LEVELS);
  }
  return 0;
}
