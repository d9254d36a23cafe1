/*
 * insn_count.c - a qemu TCG plugin (plugin API v1, qemu 7.2) that counts executed guest instructions,
 * in total and inside given address ranges. Built and driven by rt3c/stages/instruction_count.py.
 *
 *   qemu-aarch64 -plugin insn_count.so,out=counts.txt,range=400a10-400b40,range=... prog args
 *
 * Arguments: out=PATH (required): where the counts are written when the guest exits; range=START-END
 * (hex, END exclusive, repeatable): one counter each. PATH gets "total N" and then "START-END N" per
 * range, in argument order.
 *
 * Every instruction gets an inline add (no helper call) to the total and to each range that holds it,
 * inserted when qemu translates it, so a count is exact even when a translation block is left half way
 * (a semihosting call or a fault ends execution at that instruction). Counters are not per vCPU: count
 * single-threaded programs (rt3c's kernels and runtimes are).
 *
 * qemu installs no plugin header, so the few v1 declarations used here are restated from qemu's
 * include/qemu/qemu-plugin.h; qemu checks `qemu_plugin_version` before calling qemu_plugin_install.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

/* --- qemu plugin API v1 (the subset used) --- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, enum qemu_plugin_op op,
                                                void *ptr, uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

EXPORT int qemu_plugin_version = 1;
EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv);
/* --- end of the API --- */

typedef struct {
  uint64_t start, end; /* [start, end) */
  uint64_t count;
} range_t;

static uint64_t total;
static range_t *ranges;
static int n_ranges;
static const char *out_path;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  size_t n = qemu_plugin_tb_n_insns(tb);
  (void)id;
  for (size_t i = 0; i < n; ++i) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
    uint64_t address = qemu_plugin_insn_vaddr(insn);
    qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &total, 1);
    for (int r = 0; r < n_ranges; ++r) {
      if (ranges[r].start <= address && address < ranges[r].end) {
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &ranges[r].count, 1);
      }
    }
  }
}

static void write_counts(qemu_plugin_id_t id, void *userdata) {
  FILE *out = fopen(out_path, "w");
  (void)id;
  (void)userdata;
  if (out == NULL) {
    qemu_plugin_outs("insn_count: cannot write the out= file\n");
    return;
  }
  fprintf(out, "total %" PRIu64 "\n", total);
  for (int r = 0; r < n_ranges; ++r) {
    fprintf(out, "%" PRIx64 "-%" PRIx64 " %" PRIu64 "\n", ranges[r].start, ranges[r].end, ranges[r].count);
  }
  fclose(out);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
  (void)info;
  ranges = calloc((size_t)argc + 1, sizeof *ranges);
  if (ranges == NULL) {
    return -1;
  }
  for (int i = 0; i < argc; ++i) {
    if (strncmp(argv[i], "out=", 4) == 0) {
      out_path = argv[i] + 4;
    } else if (strncmp(argv[i], "range=", 6) == 0) {
      char *end;
      range_t *range = &ranges[n_ranges];
      range->start = strtoull(argv[i] + 6, &end, 16);
      if (*end != '-') {
        qemu_plugin_outs("insn_count: range= must be START-END in hex\n");
        return -1;
      }
      range->end = strtoull(end + 1, &end, 16);
      if (*end != '\0' || range->end <= range->start) {
        qemu_plugin_outs("insn_count: range= must be START-END in hex with START < END\n");
        return -1;
      }
      ++n_ranges;
    } else {
      qemu_plugin_outs("insn_count: unknown argument (expected out=PATH or range=START-END)\n");
      return -1;
    }
  }
  if (out_path == NULL) {
    qemu_plugin_outs("insn_count: out=PATH is required\n");
    return -1;
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, write_counts, NULL);
  return 0;
}
