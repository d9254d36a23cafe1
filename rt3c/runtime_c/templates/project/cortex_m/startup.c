/*
 * startup.c - reset and fault handlers for the example firmware on qemu's MPS2 boards (rt3c).
 *
 * The reset handler turns on the FPU (the code is built for the hard-float ABI) and enters newlib's
 * _start (crt0 of --specs=rdimon.specs), which zeroes .bss, sets up semihosting and calls main. qemu
 * loads .data straight into RAM from the ELF, so nothing is copied from flash.
 */
#include <stdint.h>

extern void _start(void);
extern uint32_t __stack_top;

void Reset_Handler(void);
void Fault_Handler(void);

void Reset_Handler(void) {
  /* CPACR: full access to coprocessors 10 and 11 (the FPU). */
  *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20);
  __asm volatile("dsb\n\tisb" ::: "memory");
  _start();
  for (;;) {
  }
}

void Fault_Handler(void) {
  for (;;) {
  }
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(&__stack_top),
    Reset_Handler,
    Fault_Handler, /* NMI */
    Fault_Handler, /* HardFault */
    Fault_Handler, /* MemManage */
    Fault_Handler, /* BusFault */
    Fault_Handler, /* UsageFault */
};
